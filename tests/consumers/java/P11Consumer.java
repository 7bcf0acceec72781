// The Java SunPKCS11 consumer of tests/consumers (java.sh compiles and runs it).
// Usage: java P11Consumer CONFIG PIN BACKEND:KIND:LABEL[:DECRYPT_LABEL[:OAEP_HASH]]...
// Loads SunPKCS11 with CONFIG, opens the PKCS11 KeyStore with PIN, lists every entry, and for each key named on the
// command line signs (SHA256withRSA, RSASSA-PSS, SHA256withECDSA, Ed25519) and OAEP-decrypts through the token,
// verifying or encrypting with the JDK's software providers and the entry's certificate. One line per check:
//   RESULT <pass|fail|n/a> <backend> <operation> [reason]
import java.security.*;
import java.security.cert.X509Certificate;
import java.security.spec.MGF1ParameterSpec;
import java.security.spec.PSSParameterSpec;
import java.util.*;
import javax.crypto.Cipher;
import javax.crypto.spec.OAEPParameterSpec;
import javax.crypto.spec.PSource;

public class P11Consumer {
    static void result(String status, String backend, String op, String reason) {
        System.out.println("RESULT\t" + status + "\t" + backend + "\t" + op + "\t" + (reason == null ? "" : reason.replace('\t', ' ').replace('\n', ' ')));
    }

    static String why(Throwable e) {
        StringBuilder sb = new StringBuilder();
        for (Throwable c = e; c != null; c = c.getCause()) {
            if (sb.length() > 0) sb.append(" <- ");
            sb.append(c.getClass().getSimpleName()).append(": ").append(c.getMessage());
        }
        return sb.toString();
    }

    interface Check { void run() throws Exception; }

    static void check(String backend, String op, Check c) {
        try {
            c.run();
            result("pass", backend, op, null);
        } catch (Throwable e) {
            result("fail", backend, op, why(e));
        }
    }

    static Provider software(String alg) {
        // The JDK's software implementation: the first provider other than SunPKCS11 that has the algorithm.
        for (Provider p : Security.getProviders()) {
            if (!p.getName().startsWith("SunPKCS11") && p.getService("Signature", alg) != null) return p;
        }
        throw new IllegalStateException("no software provider for " + alg);
    }

    public static void main(String[] args) throws Exception {
        Provider p11 = Security.getProvider("SunPKCS11").configure(args[0]);
        Security.addProvider(p11);
        KeyStore ks = KeyStore.getInstance("PKCS11", p11);
        ks.load(null, args[1].toCharArray());
        Map<String, String> aliasOf = new HashMap<>();
        for (String a : Collections.list(ks.aliases())) {
            String kind = ks.isKeyEntry(a) ? "key" : "cert";
            java.security.cert.Certificate c0 = ks.getCertificate(a);
            String subj = c0 instanceof X509Certificate ? ((X509Certificate) c0).getSubjectX500Principal().getName() : "-";
            System.out.println("ENTRY\t" + a + "\t" + kind + "\t" + subj);
            aliasOf.put(a, a);
        }
        check("token", "KeyStore: every private key entry has its certificate", () -> {
            int n = 0;
            for (String a : Collections.list(ks.aliases())) {
                if (!ks.isKeyEntry(a) || ks.entryInstanceOf(a, KeyStore.SecretKeyEntry.class)) continue;
                if (ks.getCertificate(a) == null) throw new Exception("private key '" + a + "' has no certificate");
                n++;
            }
            if (n == 0) throw new Exception("no private key entries");
        });
        byte[] msg = "p11bridge consumer matrix: java".getBytes();
        for (int i = 2; i < args.length; i++) {
            String[] f = args[i].split(":");
            String b = f[0], kind = f[1], label = f[2];
            check(b, "KeyStore lists the " + kind + " key with its certificate", () -> {
                if (!ks.isKeyEntry(label)) throw new Exception("no key entry '" + label + "'");
                X509Certificate c = (X509Certificate) ks.getCertificate(label);
                if (c == null) throw new Exception("no certificate");
                c.verify(c.getPublicKey()); // self-signed by the key, checked in software
            });
            if (!ks.isKeyEntry(label)) continue;
            PrivateKey priv;
            try {
                priv = (PrivateKey) ks.getKey(label, null);
                result("pass", b, "KeyStore.getKey (" + kind + ")", null);
            } catch (ProviderException e) {
                if (kind.equals("ed25519") && String.valueOf(e.getMessage()).contains("unknown key type")) {
                    result("n/a", b, "KeyStore.getKey (" + kind + ")",
                        "JDK 17's SunPKCS11 has no EdDSA key type (P11KeyStore: unknown key type)");
                } else {
                    result("fail", b, "KeyStore.getKey (" + kind + ")", why(e));
                }
                continue;
            }
            PublicKey pub = ks.getCertificate(label).getPublicKey();
            List<String[]> sigs = new ArrayList<>();
            if (kind.equals("rsa")) {
                sigs.add(new String[] {"SHA256withRSA", null});
                sigs.add(new String[] {"RSASSA-PSS", "pss"});
            } else if (kind.equals("ec")) {
                sigs.add(new String[] {"SHA256withECDSA", null});
            } else if (kind.equals("ed25519")) {
                sigs.add(new String[] {"Ed25519", null});
            }
            for (String[] s : sigs) {
                check(b, "Signature " + s[0] + " (" + kind + ")", () -> {
                    Signature sig = Signature.getInstance(s[0], p11);
                    Signature ver = Signature.getInstance(s[0], software(s[0]));
                    if (s[1] != null) {
                        PSSParameterSpec spec = new PSSParameterSpec("SHA-256", "MGF1", MGF1ParameterSpec.SHA256, 32, 1);
                        sig.setParameter(spec);
                        ver.setParameter(spec);
                    }
                    sig.initSign(priv);
                    sig.update(msg);
                    byte[] out = sig.sign();
                    ver.initVerify(pub);
                    ver.update(msg);
                    if (!ver.verify(out)) throw new Exception("the software provider rejects the signature");
                });
            }
            if (kind.equals("rsa")) {
                String dlabel = f.length > 3 && !f[3].isEmpty() ? f[3] : label;
                String hash = f.length > 4 ? f[4] : "SHA-256";
                String t = "RSA/ECB/OAEPWith" + hash + "AndMGF1Padding";
                PrivateKey dk = (PrivateKey) ks.getKey(dlabel, null);
                PublicKey dp = ks.getCertificate(dlabel).getPublicKey();
                try {
                    Cipher.getInstance(t, p11);
                    check(b, "Cipher " + t + " decrypt (rsa)", () -> {
                        OAEPParameterSpec spec = new OAEPParameterSpec(hash, "MGF1", hash.equals("SHA-1")
                            ? MGF1ParameterSpec.SHA1 : MGF1ParameterSpec.SHA256, PSource.PSpecified.DEFAULT);
                        Cipher enc = Cipher.getInstance("RSA/ECB/OAEPPadding", "SunJCE");
                        enc.init(Cipher.ENCRYPT_MODE, dp, spec);
                        Cipher dec = Cipher.getInstance(t, p11);
                        dec.init(Cipher.DECRYPT_MODE, dk, spec);
                        if (!Arrays.equals(dec.doFinal(enc.doFinal(msg)), msg)) throw new Exception("decrypted bytes differ");
                    });
                } catch (GeneralSecurityException e) {
                    result("n/a", b, "Cipher RSA/ECB/OAEPWith…AndMGF1Padding decrypt (rsa)",
                        "JDK 17's SunPKCS11 has no OAEP cipher (RSA/ECB/PKCS1Padding and NoPadding only): " + why(e));
                }
                if (b.equals("hsm")) {
                    check(b, "Cipher RSA/ECB/PKCS1Padding decrypt (rsa)", () -> {
                        Cipher enc = Cipher.getInstance("RSA/ECB/PKCS1Padding", "SunJCE");
                        enc.init(Cipher.ENCRYPT_MODE, dp);
                        Cipher dec = Cipher.getInstance("RSA/ECB/PKCS1Padding", p11);
                        dec.init(Cipher.DECRYPT_MODE, dk);
                        if (!Arrays.equals(dec.doFinal(enc.doFinal(msg)), msg)) throw new Exception("decrypted bytes differ");
                    });
                } else {
                    result("n/a", b, "Cipher RSA/ECB/PKCS1Padding decrypt (rsa)",
                        "the " + b + " backend decrypts RSA with OAEP only");
                }
            }
        }
    }
}
