"""Token verification throughput: keyherald vs PyJWT vs the raw ``cryptography`` primitive.

Run from the repository root::

    python bench/verify.py            # the figures for the closing note (~1 minute)
    python bench/verify.py --quick    # a few seconds: checks the script runs

For each of RS256, ES256 and EdDSA the same tokens go through

- **keyherald**: ``subscriber.verify.verify_token`` with every hardening check (size cap,
  strict base64url and JSON, header rules, kid lookup, alg from the key, signature, iss, aud,
  exp, nbf, iat with leeway);
- **PyJWT**: ``jwt.decode`` with a pre-loaded key object and the same claim checks (iss, aud,
  exp required; leeway);
- **raw**: only the ``cryptography`` ``verify`` call, on signature bytes and signing input
  decoded beforehand (for ES256 the signature is even pre-converted to DER), i.e. the floor
  no JWT library can go below.

The machine is shared and noisy, so contenders are interleaved within each round (same noise
for all), rounds are repeated, and the best round is reported with the spread between best
and median rounds as the noise figure.
"""

import argparse
import gc
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import jwt
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

from subscriber.jwk import PublicKey, load_public_jwk
from subscriber.jws import b64url_decode, b64url_encode
from subscriber.verify import VerifyOptions, verify_token

ISSUER = "https://id.example.com"
AUDIENCE = "orders-api"
# PyJWT reads the wall clock, so the tokens are minted for the real present.
NOW = int(time.time())
ALGS = ("RS256", "ES256", "EdDSA")


@dataclass
class Subject:
    alg: str
    tokens: list[str]
    keys: dict[str, PublicKey]
    pyjwt_key: Any
    raw: Callable[[], None]


def _public_jwk(alg: str, public: Any) -> dict[str, Any]:
    if alg == "RS256":
        n = public.public_numbers()
        return {"kty": "RSA", "n": b64url_encode(n.n.to_bytes(256, "big")), "e": "AQAB"}
    if alg == "ES256":
        n = public.public_numbers()
        return {
            "kty": "EC",
            "crv": "P-256",
            "x": b64url_encode(n.x.to_bytes(32, "big")),
            "y": b64url_encode(n.y.to_bytes(32, "big")),
        }
    raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return {"kty": "OKP", "crv": "Ed25519", "x": b64url_encode(raw)}


def _raw_loop(alg: str, public: Any, tokens: list[str]) -> Callable[[], None]:
    """One pass of the bare primitive over pre-decoded inputs."""
    pairs = []
    for token in tokens:
        signing_input, _, signature_b64 = token.rpartition(".")
        signature = b64url_decode(signature_b64)
        if alg == "ES256":
            r, s = signature[:32], signature[32:]
            signature = encode_dss_signature(int.from_bytes(r, "big"), int.from_bytes(s, "big"))
        pairs.append((signature, signing_input.encode()))
    verify = public.verify
    if alg == "RS256":
        pkcs1, sha256 = padding.PKCS1v15(), hashes.SHA256()

        def run() -> None:
            for signature, message in pairs:
                verify(signature, message, pkcs1, sha256)

    elif alg == "ES256":
        ecdsa = ec.ECDSA(hashes.SHA256())

        def run() -> None:
            for signature, message in pairs:
                verify(signature, message, ecdsa)

    else:

        def run() -> None:
            for signature, message in pairs:
                verify(signature, message)

    return run


def make_subject(alg: str, count: int) -> Subject:
    if alg == "RS256":
        private: Any = rsa.generate_private_key(65537, 2048)
    elif alg == "ES256":
        private = ec.generate_private_key(ec.SECP256R1())
    else:
        private = Ed25519PrivateKey.generate()
    public = private.public_key()
    kid = f"bench-{alg.lower()}"
    key = load_public_jwk({**_public_jwk(alg, public), "kid": kid, "alg": alg, "use": "sig"})
    tokens = [
        jwt.encode(
            {
                "iss": ISSUER,
                "aud": AUDIENCE,
                "sub": f"user-{i}",
                "scope": "orders:read orders:write",
                "jti": f"{i:016x}",
                "iat": NOW - 60,
                "nbf": NOW - 60,
                "exp": NOW + 3600,
            },
            private,
            algorithm=alg,
            headers={"kid": kid, "typ": "at+jwt"},
        )
        for i in range(count)
    ]
    return Subject(alg, tokens, {kid: key}, public, _raw_loop(alg, public, tokens))


def contenders(subject: Subject) -> dict[str, Callable[[], None]]:
    tokens, keys, alg = subject.tokens, subject.keys, subject.alg
    options = VerifyOptions(issuer=ISSUER, audience=AUDIENCE, typ="at+jwt")
    now = float(NOW)
    pyjwt_key = subject.pyjwt_key
    decode = jwt.decode
    pyjwt_options = {"require": ["exp", "iss", "aud"]}

    def keyherald() -> None:
        for token in tokens:
            verify_token(token, keys, options, now)

    def pyjwt() -> None:
        for token in tokens:
            decode(
                token,
                pyjwt_key,
                algorithms=[alg],
                audience=AUDIENCE,
                issuer=ISSUER,
                leeway=30,
                options=pyjwt_options,  # type: ignore[arg-type]
            )

    return {"keyherald": keyherald, "pyjwt": pyjwt, "raw": subject.raw}


def measure(subject: Subject, rounds: int, loops: int) -> dict[str, list[float]]:
    """tokens/s of each contender for each round; contenders rotate order every round."""
    runs = contenders(subject)
    names = list(runs)
    rates: dict[str, list[float]] = {name: [] for name in names}
    per_pass = len(subject.tokens)
    for round_index in range(rounds):
        order = names[round_index % len(names) :] + names[: round_index % len(names)]
        for name in order:
            run = runs[name]
            gc.collect()
            gc.disable()
            try:
                start = time.perf_counter()
                for _ in range(loops):
                    run()
                elapsed = time.perf_counter() - start
            finally:
                gc.enable()
            rates[name].append(per_pass * loops / elapsed)
    return rates


def check(subject: Subject) -> None:
    """Every contender must accept every token before any of them is timed."""
    for run in contenders(subject).values():
        run()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="a few seconds, to check it runs")
    parser.add_argument("--rounds", type=int, help="rounds per algorithm (default 9; quick 2)")
    parser.add_argument("--tokens", type=int, help="distinct tokens per algorithm")
    args = parser.parse_args(argv)
    rounds = args.rounds or (2 if args.quick else 9)
    count = args.tokens or (20 if args.quick else 400)
    budget_s = 0.02 if args.quick else 0.4  # per contender per round, roughly

    print(f"keyherald verify benchmark: {count} tokens/alg, best of {rounds} rounds")
    print(f"python {sys.version.split()[0]}, PyJWT {jwt.__version__}")
    header = (
        f"{'alg':<6} {'keyherald/s':>12} {'pyjwt/s':>10} {'raw/s':>10} "
        f"{'kh/raw':>7} {'pyjwt/raw':>9}  noise (best vs median round: kh, pyjwt, raw)"
    )
    print(header)
    for alg in ALGS:
        subject = make_subject(alg, count)
        check(subject)
        # Calibrate loops so each timed run lasts about budget_s.
        start = time.perf_counter()
        subject.raw()
        raw_pass_s = time.perf_counter() - start
        loops = max(1, round(budget_s / max(raw_pass_s, 1e-9)))
        rates = measure(subject, rounds, loops)
        best = {name: max(values) for name, values in rates.items()}
        noise = {
            name: 1 - statistics.median(values) / max(values) for name, values in rates.items()
        }
        print(
            f"{alg:<6} {best['keyherald']:>12,.0f} {best['pyjwt']:>10,.0f} "
            f"{best['raw']:>10,.0f} {best['keyherald'] / best['raw']:>7.2f} "
            f"{best['pyjwt'] / best['raw']:>9.2f}  "
            f"{noise['keyherald']:.0%}, {noise['pyjwt']:.0%}, {noise['raw']:.0%}"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
