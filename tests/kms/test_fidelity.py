"""Tests for tests/kms/moto_fidelity.py: each patched behaviour is checked
against an independent implementation (the `cryptography` package) and the
documented AWS KMS error shapes; plus the counter and fault side channel.

Run: python3 -m pytest -q tests/kms
"""

import base64
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request

import boto3
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding
from cryptography.hazmat.primitives.asymmetric.utils import Prehashed

LAUNCHER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "moto_fidelity.py")

HASHES = {"SHA_256": hashes.SHA256(), "SHA_384": hashes.SHA384(), "SHA_512": hashes.SHA512()}
EC_SPECS = {"ECC_NIST_P256": "SHA_256", "ECC_NIST_P384": "SHA_384", "ECC_NIST_P521": "SHA_512"}
RSA_SIGNING = [f"RSASSA_{s}_{h}" for s in ("PKCS1_V1_5", "PSS") for h in HASHES]


# --------------------------------------------------------------------------
# fixtures
# --------------------------------------------------------------------------


@pytest.fixture(scope="session")
def server():
    """The launcher as a subprocess on a free port; yields its base URL."""
    log = tempfile.TemporaryFile()
    proc = subprocess.Popen(
        [sys.executable, LAUNCHER, "--host", "127.0.0.1", "--port", "0"],
        stdout=subprocess.PIPE, stderr=log, text=True,
    )
    line = []
    reader = threading.Thread(target=lambda: line.append(proc.stdout.readline()), daemon=True)
    reader.start()
    reader.join(60)
    if not line or not line[0].startswith("READY http://127.0.0.1:"):
        proc.kill()
        log.seek(0)
        pytest.fail(f"launcher did not get ready: {line!r}\n{log.read().decode(errors='replace')}")
    try:
        yield line[0].split()[1]
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


def make_client(url, attempts=1):
    return boto3.client(
        "kms", endpoint_url=url, region_name="us-east-1",
        aws_access_key_id="testing", aws_secret_access_key="testing", aws_session_token="testing",
        config=Config(retries={"mode": "standard", "total_max_attempts": attempts}),
    )


@pytest.fixture(scope="session")
def kms(server):
    return make_client(server)


def side(url, path, body=None):
    """Call the side channel; returns (status, parsed JSON)."""
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url + path, data=data, method="GET" if body is None else "POST")
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


@pytest.fixture(autouse=True)
def _clean_side_channel(request):
    if "server" in request.fixturenames:
        assert side(request.getfixturevalue("server"), "/_fidelity/reset", {})[0] == 200


class Key:
    def __init__(self, kms, spec, usage):
        self.id = kms.create_key(KeySpec=spec, KeyUsage=usage)["KeyMetadata"]["KeyId"]
        der = kms.get_public_key(KeyId=self.id)["PublicKey"]
        self.public = serialization.load_der_public_key(der)


@pytest.fixture(scope="session")
def keys(kms):
    cache = {}

    def get(spec, usage="SIGN_VERIFY"):
        if (spec, usage) not in cache:
            cache[(spec, usage)] = Key(kms, spec, usage)
        return cache[(spec, usage)]

    return get


def error_of(excinfo):
    err = excinfo.value.response
    return err["Error"]["Code"], err["ResponseMetadata"]["HTTPStatusCode"]


def local_verify(public, algorithm, signature, data, prehashed):
    """Verify with cryptography as KMS documents the algorithm; raises InvalidSignature."""
    h = HASHES[algorithm[-7:]]
    arg = Prehashed(h) if prehashed else h
    if algorithm.startswith("ECDSA"):
        public.verify(signature, data, ec.ECDSA(arg))
    elif "_PSS_" in algorithm:
        public.verify(signature, data, padding.PSS(mgf=padding.MGF1(h), salt_length=h.digest_size), arg)
    else:
        public.verify(signature, data, padding.PKCS1v15(), arg)


ALL_SIGNING = [("RSA_2048", a) for a in RSA_SIGNING] + [(s, f"ECDSA_{h}") for s, h in EC_SPECS.items()]


def digest_of(algorithm, message):
    return hashlib.new(algorithm[-7:].replace("_", "").lower(), message).digest()


# --------------------------------------------------------------------------
# 1. MessageType=DIGEST signs/verifies the digest as-is
# --------------------------------------------------------------------------


@pytest.mark.parametrize("spec,algorithm", ALL_SIGNING)
def test_digest_is_signed_as_is(kms, keys, spec, algorithm):
    key = keys(spec)
    message = b"p11bridge digest fidelity"
    digest = digest_of(algorithm, message)

    sig = kms.sign(KeyId=key.id, Message=digest, MessageType="DIGEST", SigningAlgorithm=algorithm)["Signature"]
    # The signature is over `digest` itself, i.e. over `message` hashed once.
    local_verify(key.public, algorithm, sig, digest, prehashed=True)
    local_verify(key.public, algorithm, sig, message, prehashed=False)
    # KMS verifies it both as DIGEST and as RAW of the original message.
    for msg, mtype in ((digest, "DIGEST"), (message, "RAW")):
        r = kms.verify(KeyId=key.id, Message=msg, MessageType=mtype, Signature=sig, SigningAlgorithm=algorithm)
        assert r["SignatureValid"] is True and r["SigningAlgorithm"] == algorithm

    # A RAW signature of the message is the same thing as a signature of its digest.
    sig = kms.sign(KeyId=key.id, Message=message, MessageType="RAW", SigningAlgorithm=algorithm)["Signature"]
    local_verify(key.public, algorithm, sig, digest, prehashed=True)
    assert kms.verify(KeyId=key.id, Message=digest, MessageType="DIGEST", Signature=sig,
                      SigningAlgorithm=algorithm)["SignatureValid"] is True


# --------------------------------------------------------------------------
# 2. RSASSA_PSS salt length = hash length, MGF1 with the same hash
# --------------------------------------------------------------------------


@pytest.mark.parametrize("hname", list(HASHES))
@pytest.mark.parametrize("mtype", ["RAW", "DIGEST"])
def test_pss_salt_is_hash_length(kms, keys, hname, mtype):
    key = keys("RSA_2048")
    h = HASHES[hname]
    algorithm = f"RSASSA_PSS_{hname}"
    message = b"pss salt length"
    data = digest_of(algorithm, message) if mtype == "DIGEST" else message
    sig = kms.sign(KeyId=key.id, Message=data, MessageType=mtype, SigningAlgorithm=algorithm)["Signature"]

    def pss(salt_length, mgf_hash=h):
        return padding.PSS(mgf=padding.MGF1(mgf_hash), salt_length=salt_length)

    key.public.verify(sig, message, pss(h.digest_size), h)  # explicit lengths are checked exactly
    # The maximum salt (what unpatched moto uses), a near-miss, or another MGF1 hash must not verify.
    # (PSS.MAX_LENGTH is not used here: on verify, OpenSSL treats it as "auto-detect".)
    max_salt = key.public.key_size // 8 - h.digest_size - 2
    other = hashes.SHA1()
    for wrong in (pss(max_salt), pss(h.digest_size + 1), pss(h.digest_size, other)):
        with pytest.raises(InvalidSignature):
            key.public.verify(sig, message, wrong, h)


# --------------------------------------------------------------------------
# 3. RSA ENCRYPT_DECRYPT keys use RSAES-OAEP
# --------------------------------------------------------------------------


@pytest.mark.parametrize("algorithm,h", [("RSAES_OAEP_SHA_1", hashes.SHA1()), ("RSAES_OAEP_SHA_256", hashes.SHA256())])
def test_rsa_oaep(kms, keys, algorithm, h):
    key = keys("RSA_2048", "ENCRYPT_DECRYPT")
    oaep = padding.OAEP(mgf=padding.MGF1(h), algorithm=h, label=None)
    plaintext = b"wrapped key material"

    # Ciphertext produced locally with the GetPublicKey key decrypts through KMS.
    local_ct = key.public.encrypt(plaintext, oaep)
    r = kms.decrypt(KeyId=key.id, CiphertextBlob=local_ct, EncryptionAlgorithm=algorithm)
    assert r["Plaintext"] == plaintext and r["EncryptionAlgorithm"] == algorithm
    assert r["KeyId"].endswith(key.id)

    # KMS Encrypt produces a plain RSA ciphertext (modulus length, randomized) that decrypts.
    r = kms.encrypt(KeyId=key.id, Plaintext=plaintext, EncryptionAlgorithm=algorithm)
    assert r["EncryptionAlgorithm"] == algorithm and len(r["CiphertextBlob"]) == 256
    assert r["CiphertextBlob"] != kms.encrypt(KeyId=key.id, Plaintext=plaintext,
                                              EncryptionAlgorithm=algorithm)["CiphertextBlob"]
    assert kms.decrypt(KeyId=key.id, CiphertextBlob=r["CiphertextBlob"],
                       EncryptionAlgorithm=algorithm)["Plaintext"] == plaintext

    # Maximum plaintext is k - 2*hLen - 2; one more byte is rejected.
    limit = 256 - 2 * h.digest_size - 2
    ct = kms.encrypt(KeyId=key.id, Plaintext=b"x" * limit, EncryptionAlgorithm=algorithm)["CiphertextBlob"]
    assert kms.decrypt(KeyId=key.id, CiphertextBlob=ct, EncryptionAlgorithm=algorithm)["Plaintext"] == b"x" * limit
    with pytest.raises(ClientError) as e:
        kms.encrypt(KeyId=key.id, Plaintext=b"x" * (limit + 1), EncryptionAlgorithm=algorithm)
    assert error_of(e) == ("ValidationException", 400)

    # Decrypting with the other OAEP hash fails as a bad ciphertext.
    other = "RSAES_OAEP_SHA_256" if algorithm == "RSAES_OAEP_SHA_1" else "RSAES_OAEP_SHA_1"
    with pytest.raises(ClientError) as e:
        kms.decrypt(KeyId=key.id, CiphertextBlob=local_ct, EncryptionAlgorithm=other)
    assert error_of(e) == ("InvalidCiphertextException", 400)


def test_rsa_encrypt_needs_oaep_algorithm(kms, keys):
    key = keys("RSA_2048", "ENCRYPT_DECRYPT")
    for call in (lambda: kms.encrypt(KeyId=key.id, Plaintext=b"x"),
                 lambda: kms.encrypt(KeyId=key.id, Plaintext=b"x", EncryptionAlgorithm="SYMMETRIC_DEFAULT"),
                 lambda: kms.decrypt(KeyId=key.id, CiphertextBlob=b"\0" * 256)):
        with pytest.raises(ClientError) as e:
            call()
        assert error_of(e) == ("InvalidKeyUsageException", 400)


def test_symmetric_keys_unchanged(kms):
    key_id = kms.create_key()["KeyMetadata"]["KeyId"]
    ct = kms.encrypt(KeyId=key_id, Plaintext=b"hello", EncryptionContext={"a": "b"})["CiphertextBlob"]
    assert kms.decrypt(CiphertextBlob=ct, EncryptionContext={"a": "b"})["Plaintext"] == b"hello"
    assert kms.decrypt(KeyId=key_id, CiphertextBlob=ct, EncryptionContext={"a": "b"})["Plaintext"] == b"hello"


# --------------------------------------------------------------------------
# 4. A bad signature raises KMSInvalidSignatureException
# --------------------------------------------------------------------------


@pytest.mark.parametrize("spec,algorithm", ALL_SIGNING)
def test_bad_signature_raises(kms, keys, spec, algorithm):
    key = keys(spec)
    sig = bytearray(kms.sign(KeyId=key.id, Message=b"original", SigningAlgorithm=algorithm)["Signature"])
    tampered = bytes(sig[:-1]) + bytes([sig[-1] ^ 0x01])
    for message, signature in ((b"original", tampered), (b"changed", bytes(sig)), (b"original", b"garbage")):
        with pytest.raises(ClientError) as e:
            kms.verify(KeyId=key.id, Message=message, Signature=signature, SigningAlgorithm=algorithm)
        assert error_of(e) == ("KMSInvalidSignatureException", 400)
    # A digest hashed twice (RAW over a digest vs DIGEST at signing) does not verify.
    digest = digest_of(algorithm, b"original")
    sig = kms.sign(KeyId=key.id, Message=digest, MessageType="DIGEST", SigningAlgorithm=algorithm)["Signature"]
    with pytest.raises(ClientError) as e:
        kms.verify(KeyId=key.id, Message=digest, MessageType="RAW", Signature=sig, SigningAlgorithm=algorithm)
    assert error_of(e) == ("KMSInvalidSignatureException", 400)


def test_invalid_signature_wire_shape(server, keys):
    """Raw HTTP: status 400 and __type KMSInvalidSignatureException."""
    from botocore.auth import SigV4Auth
    from botocore.awsrequest import AWSRequest
    from botocore.credentials import Credentials

    key = keys("ECC_NIST_P256")
    body = json.dumps({"KeyId": key.id, "Message": base64.b64encode(b"m").decode(),
                       "Signature": base64.b64encode(b"bad").decode(), "SigningAlgorithm": "ECDSA_SHA_256"})
    req = AWSRequest(method="POST", url=server + "/", data=body, headers={
        "X-Amz-Target": "TrentService.Verify", "Content-Type": "application/x-amz-json-1.1"})
    SigV4Auth(Credentials("testing", "testing"), "kms", "us-east-1").add_auth(req)
    http = urllib.request.Request(server + "/", data=body.encode(), headers=dict(req.headers), method="POST")
    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen(http, timeout=10)
    assert e.value.code == 400
    assert json.loads(e.value.read())["__type"] == "KMSInvalidSignatureException"


# --------------------------------------------------------------------------
# 5. DIGEST of the wrong length is a ValidationException
# --------------------------------------------------------------------------

WRONG_LENGTHS = (
    [("RSA_2048", a, n) for a in RSA_SIGNING for n in (20, 32, 48, 64) if n != HASHES[a[-7:]].digest_size]
    + [(s, f"ECDSA_{h}", n) for s, h in EC_SPECS.items() for n in (20, 32, 48, 64, 66)
       if n != HASHES[h].digest_size]
)


@pytest.mark.parametrize("spec,algorithm,length", WRONG_LENGTHS)
def test_digest_wrong_length_rejected(kms, keys, spec, algorithm, length):
    key = keys(spec)
    digest = os.urandom(length)
    with pytest.raises(ClientError) as e:
        kms.sign(KeyId=key.id, Message=digest, MessageType="DIGEST", SigningAlgorithm=algorithm)
    assert error_of(e) == ("ValidationException", 400)
    good = kms.sign(KeyId=key.id, Message=b"m", SigningAlgorithm=algorithm)["Signature"]
    with pytest.raises(ClientError) as e:
        kms.verify(KeyId=key.id, Message=digest, MessageType="DIGEST", Signature=good, SigningAlgorithm=algorithm)
    assert error_of(e) == ("ValidationException", 400)


def test_signing_algorithm_must_match_key(kms, keys):
    with pytest.raises(ClientError) as e:
        kms.sign(KeyId=keys("ECC_NIST_P256").id, Message=b"m", SigningAlgorithm="ECDSA_SHA_384")
    assert error_of(e) == ("InvalidKeyUsageException", 400)
    with pytest.raises(ClientError) as e:
        kms.sign(KeyId=keys("RSA_2048", "ENCRYPT_DECRYPT").id, Message=b"m",
                 SigningAlgorithm="RSASSA_PSS_SHA_256")
    assert error_of(e) == ("InvalidKeyUsageException", 400)


# --------------------------------------------------------------------------
# side channel: counter
# --------------------------------------------------------------------------


def test_counter_and_reset(server, kms, keys):
    key = keys("ECC_NIST_P256")  # may create the key: reset afterwards
    assert side(server, "/_fidelity/reset", {}) == (200, {})
    assert side(server, "/_fidelity/stats") == (200, {})
    kms.sign(KeyId=key.id, Message=b"a", SigningAlgorithm="ECDSA_SHA_256")
    kms.sign(KeyId=key.id, Message=b"b", SigningAlgorithm="ECDSA_SHA_256")
    kms.get_public_key(KeyId=key.id)
    with pytest.raises(ClientError):  # failed calls count too
        kms.sign(KeyId="alias/no-such-key", Message=b"c", SigningAlgorithm="ECDSA_SHA_256")
    assert side(server, "/_fidelity/stats") == (200, {"Sign": 3, "GetPublicKey": 1})
    assert side(server, "/_fidelity/reset", {})[0] == 200
    assert side(server, "/_fidelity/stats") == (200, {})


def test_side_channel_rejects_bad_requests(server):
    assert side(server, "/_fidelity/fault", {"action": "Sign", "mode": "explode"})[0] == 400
    assert side(server, "/_fidelity/fault", {"mode": "throttle"})[0] == 400
    assert side(server, "/_fidelity/fault", {"action": "Sign", "mode": "delay", "count": 0})[0] == 400
    assert side(server, "/_fidelity/nope")[0] == 404


# --------------------------------------------------------------------------
# side channel: faults
# --------------------------------------------------------------------------


def test_fault_throttle(server, kms, keys):
    key = keys("ECC_NIST_P256")
    assert side(server, "/_fidelity/fault", {"action": "Sign", "mode": "throttle", "count": 2})[0] == 200
    kms.get_public_key(KeyId=key.id)  # other actions are not affected
    for _ in range(2):
        with pytest.raises(ClientError) as e:
            kms.sign(KeyId=key.id, Message=b"m", SigningAlgorithm="ECDSA_SHA_256")
        assert error_of(e) == ("ThrottlingException", 400)
    kms.sign(KeyId=key.id, Message=b"m", SigningAlgorithm="ECDSA_SHA_256")
    assert side(server, "/_fidelity/stats")[1] == {"Sign": 3, "GetPublicKey": 1}

    # A retrying SDK client rides through: one call, three requests on the wire.
    assert side(server, "/_fidelity/reset", {})[0] == 200
    side(server, "/_fidelity/fault", {"action": "Sign", "mode": "throttle", "count": 2})
    make_client(server, attempts=3).sign(KeyId=key.id, Message=b"m", SigningAlgorithm="ECDSA_SHA_256")
    assert side(server, "/_fidelity/stats")[1] == {"Sign": 3}


def test_fault_500(server, kms, keys):
    key = keys("RSA_2048")
    side(server, "/_fidelity/fault", {"action": "Sign", "mode": "500", "count": 1})
    with pytest.raises(ClientError) as e:
        kms.sign(KeyId=key.id, Message=b"m", SigningAlgorithm="RSASSA_PSS_SHA_256")
    assert error_of(e) == ("KMSInternalException", 500)
    kms.sign(KeyId=key.id, Message=b"m", SigningAlgorithm="RSASSA_PSS_SHA_256")
    # "*" matches any action.
    side(server, "/_fidelity/fault", {"action": "*", "mode": "500", "count": 1})
    with pytest.raises(ClientError) as e:
        kms.get_public_key(KeyId=key.id)
    assert error_of(e) == ("KMSInternalException", 500)
    kms.get_public_key(KeyId=key.id)


def test_fault_delay(server, kms, keys):
    key = keys("ECC_NIST_P256")
    side(server, "/_fidelity/fault", {"action": "Sign", "mode": "delay", "count": 1, "delay_ms": 700})
    start = time.monotonic()
    sig = kms.sign(KeyId=key.id, Message=b"m", SigningAlgorithm="ECDSA_SHA_256")["Signature"]
    assert time.monotonic() - start >= 0.7
    local_verify(key.public, "ECDSA_SHA_256", sig, b"m", prehashed=False)  # delayed, not broken
    start = time.monotonic()
    kms.sign(KeyId=key.id, Message=b"m", SigningAlgorithm="ECDSA_SHA_256")
    assert time.monotonic() - start < 0.7


def test_reset_clears_faults(server, kms, keys):
    key = keys("ECC_NIST_P256")
    side(server, "/_fidelity/fault", {"action": "Sign", "mode": "throttle", "count": 5})
    side(server, "/_fidelity/reset", {})
    kms.sign(KeyId=key.id, Message=b"m", SigningAlgorithm="ECDSA_SHA_256")


def test_key_export_import_makes_a_replica(server, kms):
    """A multi-Region key copied to another Region through the side channel: same id, same material (a signature
    made by the replica verifies with the original's public key; an HMAC of one verifies in the other), its
    alias, and ARN/MultiRegionConfiguration of a replica."""
    west = boto3.client(
        "kms", endpoint_url=server, region_name="us-west-2",
        aws_access_key_id="testing", aws_secret_access_key="testing", aws_session_token="testing",
    )
    ec_id = kms.create_key(KeySpec="ECC_NIST_P256", KeyUsage="SIGN_VERIFY", MultiRegion=True)["KeyMetadata"]["KeyId"]
    assert ec_id.startswith("mrk-")
    kms.create_alias(AliasName="alias/replicated", TargetKeyId=ec_id)
    status, exported = side(server, f"/_fidelity/key?region=us-east-1&key_id={ec_id}")
    assert status == 200 and exported["KeyId"] == ec_id and exported["PrivateKey"]
    status, imported = side(server, "/_fidelity/key", dict(exported, Region="us-west-2"))
    assert status == 200, imported
    assert imported["Arn"] == exported["Arn"].replace("us-east-1", "us-west-2")
    meta = west.describe_key(KeyId="alias/replicated")["KeyMetadata"]
    assert meta["KeyId"] == ec_id
    assert meta["MultiRegionConfiguration"]["MultiRegionKeyType"] == "REPLICA"
    public = serialization.load_der_public_key(kms.get_public_key(KeyId=ec_id)["PublicKey"])
    digest = hashlib.sha256(b"replica").digest()
    sig = west.sign(KeyId=ec_id, Message=digest, MessageType="DIGEST", SigningAlgorithm="ECDSA_SHA_256")["Signature"]
    public.verify(sig, digest, ec.ECDSA(Prehashed(hashes.SHA256())))

    # HMAC: the same key material (moto's symmetric multi-Region ciphertexts cannot work: its blob header holds
    # 36 bytes of key id and mrk- ids are 40 long).
    mac = kms.create_key(KeySpec="HMAC_256", KeyUsage="GENERATE_VERIFY_MAC", MultiRegion=True)["KeyMetadata"]["KeyId"]
    _, exported = side(server, f"/_fidelity/key?region=us-east-1&key_id={mac}")
    assert side(server, "/_fidelity/key", dict(exported, Region="us-west-2"))[0] == 200
    tag = kms.generate_mac(KeyId=mac, Message=b"m", MacAlgorithm="HMAC_SHA_256")["Mac"]
    assert west.verify_mac(KeyId=mac, Message=b"m", Mac=tag, MacAlgorithm="HMAC_SHA_256")["MacValid"]

    # Bad requests are refused, not half-applied.
    assert side(server, "/_fidelity/key?region=us-east-1&key_id=nope")[0] == 404
    assert side(server, "/_fidelity/key", dict(exported, Region="us-west-2", MultiRegion=False))[0] == 400


# --------------------------------------------------------------------------
# 6. GetPublicKey: enabled asymmetric keys only; KeyId is the ARN; KeySpec
# --------------------------------------------------------------------------


@pytest.mark.parametrize("spec,usage", [
    ("RSA_2048", "SIGN_VERIFY"), ("RSA_3072", "ENCRYPT_DECRYPT"), ("ECC_NIST_P256", "SIGN_VERIFY"),
    ("ECC_NIST_P384", "SIGN_VERIFY"), ("ECC_SECG_P256K1", "SIGN_VERIFY"),
])
def test_get_public_key_answers_as_aws(kms, spec, usage):
    meta = kms.create_key(KeySpec=spec, KeyUsage=usage)["KeyMetadata"]
    out = kms.get_public_key(KeyId=meta["KeyId"])
    assert out["KeyId"] == meta["Arn"]
    assert out["KeySpec"] == spec and out["CustomerMasterKeySpec"] == spec
    assert out["KeyUsage"] == usage
    if usage == "SIGN_VERIFY":
        assert out["SigningAlgorithms"] == meta["SigningAlgorithms"]
        assert "EncryptionAlgorithms" not in out
    else:
        assert out["EncryptionAlgorithms"] == ["RSAES_OAEP_SHA_1", "RSAES_OAEP_SHA_256"]
        assert "SigningAlgorithms" not in out
    public = serialization.load_der_public_key(out["PublicKey"])
    if spec.startswith("RSA_"):
        assert public.key_size == int(spec[4:])
    else:
        assert isinstance(public, ec.EllipticCurvePublicKey)
    # By alias and by ARN: the same answer.
    kms.create_alias(AliasName=f"alias/gpk-{meta['KeyId']}", TargetKeyId=meta["KeyId"])
    assert kms.get_public_key(KeyId=f"alias/gpk-{meta['KeyId']}")["KeyId"] == meta["Arn"]
    assert kms.get_public_key(KeyId=meta["Arn"])["PublicKey"] == out["PublicKey"]


def test_get_public_key_refuses_unusable_keys(kms):
    disabled = kms.create_key(KeySpec="ECC_NIST_P256", KeyUsage="SIGN_VERIFY")["KeyMetadata"]["KeyId"]
    kms.disable_key(KeyId=disabled)
    with pytest.raises(kms.exceptions.DisabledException) as e:
        kms.get_public_key(KeyId=disabled)
    assert error_of(e) == ("DisabledException", 400)
    kms.enable_key(KeyId=disabled)
    assert kms.get_public_key(KeyId=disabled)["KeySpec"] == "ECC_NIST_P256"

    pending = kms.create_key(KeySpec="RSA_2048", KeyUsage="SIGN_VERIFY")["KeyMetadata"]["KeyId"]
    kms.schedule_key_deletion(KeyId=pending, PendingWindowInDays=7)
    with pytest.raises(kms.exceptions.KMSInvalidStateException) as e:
        kms.get_public_key(KeyId=pending)
    assert error_of(e) == ("KMSInvalidStateException", 400)
    # Cancelling the deletion leaves the key disabled (as in KMS).
    kms.cancel_key_deletion(KeyId=pending)
    with pytest.raises(ClientError) as e:
        kms.get_public_key(KeyId=pending)
    assert error_of(e) == ("DisabledException", 400)


@pytest.mark.parametrize("spec,usage", [
    ("SYMMETRIC_DEFAULT", "ENCRYPT_DECRYPT"), ("HMAC_256", "GENERATE_VERIFY_MAC"), ("HMAC_512", "GENERATE_VERIFY_MAC"),
])
def test_get_public_key_unsupported_for_symmetric_and_hmac(kms, spec, usage):
    key_id = kms.create_key(KeySpec=spec, KeyUsage=usage)["KeyMetadata"]["KeyId"]
    with pytest.raises(kms.exceptions.UnsupportedOperationException) as e:
        kms.get_public_key(KeyId=key_id)
    assert error_of(e) == ("UnsupportedOperationException", 400)


def test_get_public_key_unknown_key(kms):
    with pytest.raises(ClientError) as e:
        kms.get_public_key(KeyId="11111111-2222-3333-4444-555555555555")
    assert error_of(e) == ("NotFoundException", 400)
