"""The loop shared by feature_differential.py and error_differential.py: options, sending each
generated request to A (the real Cube) and B (cubed), comparing by compare.py's rules."""
from __future__ import annotations

import argparse
import json
import random
from typing import Any, Callable

import compare


def run(description: str, make_request: Callable[[random.Random], dict[str, Any]],
        deliberate: Callable[[Any, Any], bool]) -> int:
    """Parse the command line, send ``--n`` requests made by ``make_request`` (seeded by
    ``--seed``) to both servers and print each difference that ``deliberate(a, b)`` (a
    documented deviation) does not explain; return how many differ."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--a", default="http://127.0.0.1:4400", help="the reference (Cube)")
    parser.add_argument("--secret", default="reference-secret")
    parser.add_argument("--b", default="http://127.0.0.1:4000", help="the server under test (cubed)")
    parser.add_argument("--secret-b", required=True)
    parser.add_argument("--n", type=int, default=100)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    generator = random.Random(args.seed)
    differ = 0
    for i in range(args.n):
        request = make_request(generator)
        a = compare.perform(args.a, request, args.secret, timeout=60)
        b = compare.perform(args.b, request, args.secret_b, timeout=60)
        errors, _ = compare.compare_answer({"request": request}, a.status, a.body, b)
        if errors and not deliberate(a, b):
            differ += 1
            print(f"DIFF {i} {request['path']} {json.dumps(request['body'])}\n   "
                  + "\n   ".join(e[:300] for e in errors[:4]))
            print(f"   cube:  {a.status} {a.text[:250]}")
            print(f"   cubed: {b.status} {b.text[:250]}")
    print(f"seed {args.seed}: {differ} of {args.n} differ")
    return differ
