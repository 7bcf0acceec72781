#!/usr/bin/env python3
"""The login half of Vault's `aws` auth method (IAM type), in front of a real OpenBao dev server.

OpenBao 2.x has no `aws` auth method built in (`bao auth enable aws`: "plugin not found in the catalog: aws"; it
lives in the separate openbao-plugins, which no package registry here serves). This server stands in for it, doing
what Vault's builtin/credential/aws login does for `iam_http_request_method` / `iam_request_url` /
`iam_request_body` / `iam_request_headers`, against a real STS emulation (moto):

  POST /v1/auth/<mount>/login   decodes the four fields (headers: a JSON object of strings or arrays of strings);
                                with the mount's `header_value`, requires the X-Vault-AWS-IAM-Server-ID header with
                                that value and among the Authorization header's SignedHeaders; sends the request to
                                the STS endpoint (Host: the signed URL's host) and reads GetCallerIdentity's Arn; the
                                role (given, else the principal's friendly name) must list that ARN in
                                `bound_iam_principal_arn`. Then a real OpenBao token with the role's policies
                                (`auth/token/create` as root), answered as Vault answers a login. Refusals are HTTP
                                400 with Vault's `errors` wording.
  GET /_aws_auth/logins         {"MOUNT/ROLE": N}: logins accepted (the tests' side channel).
  anything else                 passed to OpenBao unchanged.

Usage: aws_auth.py --port 0 --bao http://127.0.0.1:P --root-token T --sts http://127.0.0.1:Q --config mounts.json
mounts.json: {"MOUNT": {"header_value": "..." | null,
                        "roles": {"ROLE": {"bound_iam_principal_arn": ["arn..."], "policies": ["..."], "ttl": "1h"}}}}
Prints exactly one line "READY http://HOST:PORT" on stdout once it accepts requests.
"""

import argparse
import base64
import http.client
import json
import re
import sys
import urllib.parse
import threading
import xml.etree.ElementTree as ET
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

HEADER = "X-Vault-AWS-IAM-Server-ID"
LOGINS = Counter()
LOCK = threading.Lock()


class Refused(Exception):
    pass


def request(base, method, path, body, headers):
    u = urllib.parse.urlsplit(base)
    c = http.client.HTTPConnection(u.hostname, u.port, timeout=30)
    c.request(method, path, body=body, headers=headers)
    r = c.getresponse()
    return r.status, r.getheaders(), r.read()


def go_headers(raw):
    """Go's http.Header from the JSON Vault accepts: values are strings or arrays of strings."""
    out = {}
    for k, v in json.loads(raw).items():
        out.setdefault(k.lower(), []).extend(v if isinstance(v, list) else [v])
    return out


def check_server_id(headers, want):
    """Vault's validateVaultHeaderValue."""
    given = ",".join(headers.get(HEADER.lower(), []))
    if not given:
        raise Refused(f'error validating {HEADER} header: missing header "{HEADER}"')
    if given != want:
        raise Refused(f'error validating {HEADER} header: expected "{want}" but got "{given}"')
    authz = ",".join(headers.get("authorization", []))
    m = re.search(r"SignedHeaders=([^,]+)", authz)
    if not m:
        raise Refused(f"error validating {HEADER} header: missing Authorization header")
    if HEADER.lower() not in m.group(1).split(";"):
        raise Refused(f"error validating {HEADER} header: vault header wasn't signed")


def caller_arn(args, url, body, headers):
    """Vault's submitCallerIdentityRequest: the signed request sent to the configured STS endpoint."""
    u = urllib.parse.urlsplit(url)
    send = {k: ",".join(v) for k, v in headers.items() if k != "host"}
    send["Host"] = u.netloc
    status, _, answer = request(args.sts, "POST", u.path or "/", body, send)
    if status != 200:
        raise Refused(
            f"error making upstream request: received error code {status} from STS: {answer.decode(errors='replace')}"
        )
    arn = next((e.text for e in ET.fromstring(answer).iter() if e.tag.endswith("Arn")), None)
    if not arn:
        raise Refused("error making upstream request: no Arn in the GetCallerIdentity response")
    return arn


def login(args, mount, fields):
    cfg = args.mounts.get(mount)
    if cfg is None:
        return 404, {"errors": [f'no handler for route "auth/{mount}/login". route entry not found.']}
    if fields.get("iam_http_request_method") != "POST":
        raise Refused("invalid iam_http_request_method; currently only 'POST' is supported")
    url = base64.b64decode(fields.get("iam_request_url", "")).decode()
    body = base64.b64decode(fields.get("iam_request_body", ""))
    headers = go_headers(base64.b64decode(fields.get("iam_request_headers", "")))
    if b"Action=GetCallerIdentity" not in body:
        raise Refused("error parsing iam_request_body: not a GetCallerIdentity request")
    if cfg.get("header_value"):
        check_server_id(headers, cfg["header_value"])
    arn = caller_arn(args, url, body, headers)
    role_name = fields.get("role") or arn.rsplit("/", 1)[-1]
    role = cfg["roles"].get(role_name)
    if role is None:
        raise Refused(f'entry for role "{role_name}" not found')
    if arn not in role["bound_iam_principal_arn"]:
        raise Refused(f'IAM Principal "{arn}" does not belong to the role "{role_name}"')
    create = {
        "policies": role["policies"],
        "ttl": role.get("ttl", "1h"),
        "renewable": True,
        "display_name": f"{mount}-{arn}",
        "meta": {"role": role_name, "canonical_arn": arn},
    }
    status, _, answer = request(
        args.bao,
        "POST",
        "/v1/auth/token/create",
        json.dumps(create).encode(),
        {"X-Vault-Token": args.root_token, "Content-Type": "application/json"},
    )
    if status == 200:
        with LOCK:
            LOGINS[f"{mount}/{role_name}"] += 1
    return status, json.loads(answer)


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *a):
        pass

    def reply(self, status, headers, body):
        self.send_response(status)
        for k, v in headers:
            if k.lower() not in ("transfer-encoding", "connection", "content-length"):
                self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def handle_any(self):
        n = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(n) if n else None
        if self.path == "/_aws_auth/logins":
            with LOCK:
                counts = json.dumps(dict(LOGINS)).encode()
            self.reply(200, [("Content-Type", "application/json")], counts)
            return
        m = re.fullmatch(r"/v1/auth/(.+)/login", self.path)
        if m and self.command in ("POST", "PUT") and m.group(1) in self.server.args.mounts:
            try:
                status, answer = login(self.server.args, m.group(1), json.loads(body or b"{}"))
            except Refused as e:
                status, answer = 400, {"errors": [str(e)]}
            self.reply(status, [("Content-Type", "application/json")], json.dumps(answer).encode())
            return
        headers = {k: v for k, v in self.headers.items() if k.lower() not in ("host", "content-length")}
        status, out_headers, answer = request(self.server.args.bao, self.command, self.path, body, headers)
        self.reply(status, out_headers, answer)

    do_GET = do_POST = do_PUT = do_DELETE = do_LIST = handle_any


def main(argv=None):
    p = argparse.ArgumentParser()
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--bao", required=True)
    p.add_argument("--root-token", required=True)
    p.add_argument("--sts", required=True)
    p.add_argument("--config", required=True)
    args = p.parse_args(argv)
    with open(args.config) as f:
        args.mounts = json.load(f)
    server = ThreadingHTTPServer((args.host, args.port), Handler)
    server.args = args
    print(f"READY http://{args.host}:{server.server_address[1]}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    sys.exit(main())
