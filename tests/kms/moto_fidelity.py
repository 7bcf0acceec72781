#!/usr/bin/env python3
"""moto KMS server with a fidelity layer.

Runs moto's server (in the foreground, bound to the given host) with KMS
Sign/Verify/Encrypt/Decrypt/GetPublicKey patched to behave as the AWS KMS API
Reference documents, plus a small side channel for tests:

  GET  /_fidelity/stats   -> {"Sign": 3, ...}   requests per KMS action
  GET  /_fidelity/clients -> {"Sign other": 1, "ListKeys sdk": 2, ...}   the same, by sender (the AWS SDK for
                             Rust, or another client such as the bridge's caller-thread Sign)
  POST /_fidelity/reset   -> clears the counters and all pending faults
  POST /_fidelity/fault   {"action": "Sign", "mode": "throttle"|"500"|"delay",
                           "count": N, "delay_ms": M}
  GET  /_fidelity/key?region=R&key_id=K
                          -> a key with its material: {"KeyId", "Region",
                             "Arn", "KeySpec", "KeyUsage", "Description",
                             "MultiRegion", "PrimaryArn", "KeyMaterial",
                             "PrivateKey" (PKCS#8 DER, base64; asymmetric
                             keys), "Aliases"}
  POST /_fidelity/key     that JSON, with "Region" naming where to put it:
                          creates (or replaces) the key with the same id and
                          material, and its aliases. For tests of multi-Region
                          keys across two servers (a replica of the same key,
                          as AWS keeps in each Region of a multi-Region key).

See tests/kms/README.md for what each patch does and why.

Usage: python3 tests/kms/moto_fidelity.py --host 127.0.0.1 --port 0
          [--tls-cert CERT.pem --tls-key KEY.pem]
Prints exactly one line "READY http://HOST:PORT" on stdout once it accepts
requests. With --tls-cert/--tls-key it also serves HTTPS (the same server:
same keys, counters and faults) on a second free port, and the line is
"READY http://HOST:PORT https://HOST:TLSPORT".
"""

import argparse
import base64
import json
import logging
import signal
import sys
import threading
import time
from collections import Counter

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding
from cryptography.hazmat.primitives.asymmetric.utils import Prehashed
from moto.core.exceptions import JsonRESTError
from moto.kms.exceptions import (
    InvalidCiphertextException,
    InvalidKeyUsageException,
    ValidationException,
)
from moto.core import DEFAULT_ACCOUNT_ID
from moto.kms.models import kms_backends
from moto.kms.responses import KmsResponse
from moto.moto_server.werkzeug_app import (
    DomainDispatcherApplication,
    MotoRequestHandler,
    create_backend_app,
)
from werkzeug.serving import make_server
from werkzeug.wrappers import Request, Response

# --------------------------------------------------------------------------
# KMS patches
# --------------------------------------------------------------------------


class KMSInvalidSignatureException(JsonRESTError):
    code = 400

    def __init__(self) -> None:
        super().__init__(
            "KMSInvalidSignatureException",
            "The request was rejected because the signature verification failed.",
        )


class DisabledException(JsonRESTError):
    code = 400

    def __init__(self, arn: str) -> None:
        super().__init__("DisabledException", f"{arn} is disabled.")


class KMSInvalidStateException(JsonRESTError):
    code = 400

    def __init__(self, arn: str, state: str) -> None:
        super().__init__("KMSInvalidStateException", f"{arn} is {_STATE_WORDS.get(state, state)}.")


class UnsupportedOperationException(JsonRESTError):
    code = 400

    def __init__(self, message: str) -> None:
        super().__init__("UnsupportedOperationException", message)


_STATE_WORDS = {"PendingDeletion": "pending deletion", "PendingImport": "pending import"}


# SigningAlgorithm -> (scheme, hash). PSS uses MGF1 with the same hash and a
# salt as long as the hash output.
SIGNING = {
    "RSASSA_PKCS1_V1_5_SHA_256": ("pkcs1", hashes.SHA256()),
    "RSASSA_PKCS1_V1_5_SHA_384": ("pkcs1", hashes.SHA384()),
    "RSASSA_PKCS1_V1_5_SHA_512": ("pkcs1", hashes.SHA512()),
    "RSASSA_PSS_SHA_256": ("pss", hashes.SHA256()),
    "RSASSA_PSS_SHA_384": ("pss", hashes.SHA384()),
    "RSASSA_PSS_SHA_512": ("pss", hashes.SHA512()),
    "ECDSA_SHA_256": ("ecdsa", hashes.SHA256()),
    "ECDSA_SHA_384": ("ecdsa", hashes.SHA384()),
    "ECDSA_SHA_512": ("ecdsa", hashes.SHA512()),
}

# EncryptionAlgorithm -> OAEP hash (also used for MGF1; no label).
OAEP = {"RSAES_OAEP_SHA_1": hashes.SHA1(), "RSAES_OAEP_SHA_256": hashes.SHA256()}
ENCRYPTION_ALGORITHMS = ("SYMMETRIC_DEFAULT", "SM2PKE", *OAEP)

MAX_RAW_MESSAGE = 4096

_original = {name: getattr(KmsResponse, name) for name in ("sign", "verify", "encrypt", "decrypt")}


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _signing_request(resp: KmsResponse):
    """Validate a Sign/Verify request the way KMS does.

    Returns (key, algorithm, message, message_type), or None when the
    algorithm is not one this layer handles (e.g. SM2DSA): moto's own handler
    is used then.
    """
    key_id = resp._get_param("KeyId")
    resp._validate_key_id(key_id)
    key = resp.kms_backend.describe_key(key_id)

    algorithm = resp._get_param("SigningAlgorithm")
    if algorithm not in SIGNING:
        if key.signing_algorithms and algorithm in key.signing_algorithms:
            return None
        raise ValidationException(
            f"1 validation error detected: Value '{algorithm}' at 'signingAlgorithm' "
            f"failed to satisfy constraint: Member must satisfy enum value set: {sorted(SIGNING)}"
        )
    if key.key_usage != "SIGN_VERIFY" or algorithm not in (key.signing_algorithms or []):
        raise InvalidKeyUsageException()

    message_type = resp._get_param("MessageType") or "RAW"
    if message_type not in ("RAW", "DIGEST"):
        raise ValidationException(
            f"1 validation error detected: Value '{message_type}' at 'messageType' "
            "failed to satisfy constraint: Member must satisfy enum value set: [RAW, DIGEST]"
        )

    message = resp._get_param("Message")
    if isinstance(message, str):
        message = message.encode("utf-8")
    if not message:
        raise ValidationException(
            "1 validation error detected: Value at 'message' failed to satisfy "
            "constraint: Member must have length greater than or equal to 1"
        )
    if len(message) > MAX_RAW_MESSAGE:
        raise ValidationException(
            "1 validation error detected: Value at 'message' failed to satisfy "
            f"constraint: Member must have length less than or equal to {MAX_RAW_MESSAGE}"
        )
    digest_size = SIGNING[algorithm][1].digest_size
    if message_type == "DIGEST" and len(message) != digest_size:
        raise ValidationException(
            f"Digest is invalid length for algorithm {algorithm}: expected "
            f"{digest_size} bytes, got {len(message)}."
        )
    return key, algorithm, message, message_type


def _scheme(algorithm: str, message_type: str):
    """Return (padding or None, hash argument) for cryptography's sign/verify."""
    scheme, hash_alg = SIGNING[algorithm]
    hash_arg = Prehashed(hash_alg) if message_type == "DIGEST" else hash_alg
    if scheme == "pss":
        return padding.PSS(mgf=padding.MGF1(hash_alg), salt_length=hash_alg.digest_size), hash_arg
    if scheme == "pkcs1":
        return padding.PKCS1v15(), hash_arg
    return None, hash_arg


def sign(self: KmsResponse) -> str:
    request = _signing_request(self)
    if request is None:
        return _original["sign"](self)
    key, algorithm, message, message_type = request
    private_key = key.private_key.private_key  # moto wrapper -> cryptography key
    pad, hash_arg = _scheme(algorithm, message_type)
    if pad is None:
        signature = private_key.sign(message, ec.ECDSA(hash_arg))
    else:
        signature = private_key.sign(message, pad, hash_arg)
    return json.dumps(
        {"KeyId": key.arn, "Signature": _b64(signature), "SigningAlgorithm": algorithm}
    )


def verify(self: KmsResponse) -> str:
    request = _signing_request(self)
    if request is None:
        return _original["verify"](self)
    key, algorithm, message, message_type = request
    signature = self._get_param("Signature") or ""
    signature = base64.b64decode(signature) if isinstance(signature, str) else signature
    if not signature:
        raise ValidationException(
            "1 validation error detected: Value at 'signature' failed to satisfy "
            "constraint: Member must have length greater than or equal to 1"
        )
    public_key = key.private_key.private_key.public_key()
    pad, hash_arg = _scheme(algorithm, message_type)
    try:
        if pad is None:
            public_key.verify(signature, message, ec.ECDSA(hash_arg))
        else:
            public_key.verify(signature, message, pad, hash_arg)
    except (InvalidSignature, ValueError):
        raise KMSInvalidSignatureException()
    return json.dumps({"KeyId": key.arn, "SignatureValid": True, "SigningAlgorithm": algorithm})


def _rsa_encryption_request(resp: KmsResponse, key_id: str):
    """For an RSA ENCRYPT_DECRYPT key return (key, OAEP padding, algorithm);
    None for any other key (moto's own symmetric handling applies)."""
    resp._validate_key_id(key_id)
    key = resp.kms_backend.describe_key(key_id)
    if (key.key_usage or "ENCRYPT_DECRYPT") != "ENCRYPT_DECRYPT":  # moto stores None for the default
        raise InvalidKeyUsageException()
    if not key.key_spec.startswith("RSA_"):
        return None
    algorithm = resp._get_param("EncryptionAlgorithm") or "SYMMETRIC_DEFAULT"
    if algorithm not in ENCRYPTION_ALGORITHMS:
        raise ValidationException(
            f"1 validation error detected: Value '{algorithm}' at 'encryptionAlgorithm' "
            f"failed to satisfy constraint: Member must satisfy enum value set: {list(ENCRYPTION_ALGORITHMS)}"
        )
    if algorithm not in OAEP:
        raise InvalidKeyUsageException()
    h = OAEP[algorithm]
    return key, padding.OAEP(mgf=padding.MGF1(h), algorithm=h, label=None), algorithm


def encrypt(self: KmsResponse) -> str:
    request = _rsa_encryption_request(self, self._get_param("KeyId"))
    if request is None:
        return _original["encrypt"](self)
    key, oaep, algorithm = request
    plaintext = self._get_param("Plaintext") or b""
    public_key = key.private_key.private_key.public_key()
    limit = public_key.key_size // 8 - 2 * oaep.algorithm.digest_size - 2
    if not 1 <= len(plaintext) <= limit:
        raise ValidationException(
            f"Plaintext length {len(plaintext)} is out of range for {algorithm} with "
            f"{key.key_spec}: must be between 1 and {limit} bytes."
        )
    ciphertext = public_key.encrypt(plaintext, oaep)
    return json.dumps(
        {"CiphertextBlob": _b64(ciphertext), "KeyId": key.arn, "EncryptionAlgorithm": algorithm}
    )


def decrypt(self: KmsResponse) -> str:
    key_id = self._get_param("KeyId")
    # Without KeyId only symmetric ciphertexts can be decrypted (as in KMS).
    request = _rsa_encryption_request(self, key_id) if key_id else None
    if request is None:
        return _original["decrypt"](self)
    key, oaep, algorithm = request
    try:
        plaintext = key.private_key.private_key.decrypt(self._get_param("CiphertextBlob") or b"", oaep)
    except ValueError:
        raise InvalidCiphertextException()
    return json.dumps(
        {"KeyId": key.arn, "Plaintext": _b64(plaintext), "EncryptionAlgorithm": algorithm}
    )


def get_public_key(self: KmsResponse) -> str:
    """GetPublicKey as KMS documents it: only for enabled asymmetric keys; KeyId is the key ARN; KeySpec (and the
    deprecated CustomerMasterKeySpec); algorithm lists only where they apply. moto answers for keys in any state
    and, for symmetric and HMAC keys, with a public key it makes up."""
    key_id = self._get_param("KeyId")
    self._validate_key_id(key_id)
    key = self.kms_backend.describe_key(key_id)
    if key.key_state == "Disabled":
        raise DisabledException(key.arn)
    if key.key_state != "Enabled":
        raise KMSInvalidStateException(key.arn, key.key_state)
    if not key.key_spec.startswith(("RSA_", "ECC_", "SM2")):
        raise UnsupportedOperationException(
            f"{key.arn} key usage {key.key_usage or 'ENCRYPT_DECRYPT'} and key spec {key.key_spec} "
            "are not supported for this operation: GetPublicKey needs an asymmetric KMS key."
        )
    out = {
        "KeyId": key.arn,
        "PublicKey": _b64(key.private_key.public_key()),
        "KeySpec": key.key_spec,
        "CustomerMasterKeySpec": key.key_spec,
        "KeyUsage": key.key_usage,
    }
    if key.encryption_algorithms:
        out["EncryptionAlgorithms"] = key.encryption_algorithms
    if key.signing_algorithms:
        out["SigningAlgorithms"] = key.signing_algorithms
    return json.dumps(out)


def apply_patches() -> None:
    KmsResponse.get_public_key = get_public_key
    KmsResponse.sign = sign
    KmsResponse.verify = verify
    KmsResponse.encrypt = encrypt
    KmsResponse.decrypt = decrypt


# --------------------------------------------------------------------------
# Side channel: request counter and fault injection (WSGI middleware)
# --------------------------------------------------------------------------

FAULT_MODES = ("throttle", "500", "delay")


class Fidelity:
    """Wraps moto's WSGI app; counts KMS actions and injects faults."""

    def __init__(self, app):
        self.app = app
        self.lock = threading.Lock()
        self.counts: Counter = Counter()
        # "Action sdk" / "Action other": who sent it (the AWS SDK for Rust names itself in its user agent; the bridge's
        # caller-thread Sign does not), so tests can tell which path a request took.
        self.clients: Counter = Counter()
        self.faults: list = []  # dicts: action, mode, count (remaining), delay_ms

    def __call__(self, environ, start_response):
        if environ.get("PATH_INFO", "").startswith("/_fidelity/"):
            return self.control(Request(environ))(environ, start_response)

        target = environ.get("HTTP_X_AMZ_TARGET", "")
        if not target.startswith("TrentService."):
            return self.app(environ, start_response)
        action = target.split(".", 1)[1]
        sdk = "aws-sdk-rust" in environ.get("HTTP_USER_AGENT", "") + environ.get("HTTP_X_AMZ_USER_AGENT", "")
        with self.lock:
            self.counts[action] += 1
            self.clients[f"{action} {'sdk' if sdk else 'other'}"] += 1
            fault = self._take_fault(action)

        if fault is not None:
            if fault["mode"] == "delay":
                time.sleep(fault["delay_ms"] / 1000.0)
            else:
                Request(environ).get_data()  # drain the body (keep-alive)
                if fault["mode"] == "throttle":
                    status, body = 400, {"__type": "ThrottlingException", "message": "Rate exceeded"}
                else:
                    status, body = 500, {
                        "__type": "KMSInternalException",
                        "message": "Injected internal failure (moto_fidelity).",
                    }
                response = Response(json.dumps(body), status=status, content_type="application/x-amz-json-1.1")
                return response(environ, start_response)
        return self.app(environ, start_response)

    def _take_fault(self, action):
        for fault in self.faults:
            if fault["action"] in (action, "*"):
                fault["count"] -= 1
                if fault["count"] <= 0:
                    self.faults.remove(fault)
                return fault
        return None

    def control(self, request: Request) -> Response:
        path, method = request.path, request.method
        if path == "/_fidelity/stats" and method == "GET":
            with self.lock:
                return _json(200, dict(self.counts))
        if path == "/_fidelity/clients" and method == "GET":
            with self.lock:
                return _json(200, dict(self.clients))
        if path == "/_fidelity/reset" and method == "POST":
            with self.lock:
                self.counts.clear()
                self.clients.clear()
                self.faults.clear()
            return _json(200, {})
        if path == "/_fidelity/fault" and method == "POST":
            try:
                spec = json.loads(request.get_data() or b"{}")
                fault = {
                    "action": str(spec["action"]),
                    "mode": str(spec["mode"]),
                    "count": int(spec.get("count", 1)),
                    "delay_ms": int(spec.get("delay_ms", 0)),
                }
                if fault["mode"] not in FAULT_MODES or fault["count"] < 1 or fault["delay_ms"] < 0:
                    raise ValueError
            except (ValueError, KeyError, TypeError):
                return _json(400, {"error": 'expected {"action": str, "mode": "throttle"|"500"|"delay", '
                                            '"count": int >= 1, "delay_ms": int >= 0}'})
            with self.lock:
                self.faults.append(fault)
                return _json(200, {"faults": [dict(f) for f in self.faults]})
        if path == "/_fidelity/key" and method == "GET":
            try:
                return _json(200, export_key(request.args["region"], request.args["key_id"]))
            except KeyError:
                return _json(404, {"error": "expected ?region=R&key_id=K of an existing key"})
        if path == "/_fidelity/key" and method == "POST":
            try:
                spec = json.loads(request.get_data() or b"{}")
                return _json(200, import_key(spec))
            except (ValueError, KeyError, TypeError) as e:
                return _json(400, {"error": f"bad key: {e!r}"})
        return _json(404, {"error": f"unknown side-channel request {method} {path}"})


def export_key(region: str, key_id: str) -> dict:
    """A key of `region` (id, ARN or alias) with its material, as POST /_fidelity/key takes it."""
    backend = kms_backends[DEFAULT_ACCOUNT_ID][region]
    key = backend.keys[backend.any_id_to_key_id(key_id)]
    out = {
        "KeyId": key.id,
        "Region": region,
        "Arn": key.arn,
        "KeySpec": key.key_spec,
        "KeyUsage": key.key_usage,
        "Description": key.description,
        "MultiRegion": bool(key.multi_region),
        "PrimaryArn": key.multi_region_configuration["PrimaryKey"]["Arn"] if key.multi_region else None,
        "KeyMaterial": _b64(key.key_material),
        "Aliases": sorted(key.aliases),
    }
    if key.key_spec.startswith(("RSA_", "ECC_")):
        out["PrivateKey"] = _b64(
            key.private_key.private_key.private_bytes(
                serialization.Encoding.DER,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
    return out


def import_key(spec: dict) -> dict:
    """Creates (or replaces) a key with the given id and material in spec["Region"]; returns its export."""
    region = str(spec["Region"])
    backend = kms_backends[DEFAULT_ACCOUNT_ID][region]
    key_id = str(spec["KeyId"])
    multi = bool(spec.get("MultiRegion"))
    if multi != key_id.startswith("mrk-"):
        raise ValueError("multi-Region key ids start with mrk-")
    key = backend.create_key(
        None, spec.get("KeyUsage") or "ENCRYPT_DECRYPT", spec["KeySpec"],
        spec.get("Description") or "", None, multi,
    )
    del backend.keys[key.id]
    old = backend.keys.pop(key_id, None)
    key.id = key_id
    key.arn = f"arn:aws:kms:{region}:{DEFAULT_ACCOUNT_ID}:key/{key_id}"
    if multi:
        primary = spec.get("PrimaryArn") or key.arn
        key.multi_region_configuration = {
            "MultiRegionKeyType": "PRIMARY" if primary == key.arn else "REPLICA",
            "PrimaryKey": {"Arn": primary, "Region": primary.split(":")[3]},
            "ReplicaKeys": [],
        }
    key.key_material = base64.b64decode(spec["KeyMaterial"])
    if spec.get("PrivateKey"):
        key.private_key.private_key = serialization.load_der_private_key(
            base64.b64decode(spec["PrivateKey"]), password=None
        )
    backend.keys[key_id] = key
    if old is not None:
        key.aliases = old.aliases
    for alias in spec.get("Aliases") or []:
        if not str(alias).startswith("alias/"):
            raise ValueError("aliases start with alias/")
        backend.delete_alias(alias)
        backend.create_alias(key_id, alias)
    return export_key(region, key_id)


def _json(status: int, body) -> Response:
    return Response(json.dumps(body), status=status, content_type="application/json")


# --------------------------------------------------------------------------
# main
# --------------------------------------------------------------------------


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    parser.add_argument("--verbose", action="store_true", help="log every request to stderr")
    parser.add_argument("--tls-cert", help="also serve HTTPS with this certificate (PEM)")
    parser.add_argument("--tls-key", help="the key of --tls-cert (PEM)")
    args = parser.parse_args(argv)
    if bool(args.tls_cert) != bool(args.tls_key):
        parser.error("--tls-cert and --tls-key go together")

    if not args.verbose:
        logging.getLogger("werkzeug").setLevel(logging.WARNING)
    apply_patches()
    app = Fidelity(DomainDispatcherApplication(create_backend_app))
    server = make_server(args.host, args.port, app, threaded=True, request_handler=MotoRequestHandler)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    host, port = server.server_address[:2]
    ready = f"READY http://{host}:{port}"
    if args.tls_cert:
        tls = make_server(
            args.host,
            0,
            app,
            threaded=True,
            request_handler=MotoRequestHandler,
            ssl_context=(args.tls_cert, args.tls_key),
        )
        threading.Thread(target=tls.serve_forever, daemon=True).start()
        ready += f" https://{host}:{tls.server_address[1]}"
    print(ready, flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()


if __name__ == "__main__":
    main()
