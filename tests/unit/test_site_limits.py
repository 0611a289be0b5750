"""Site files that would cost unbounded time or memory, or that hold values of the wrong
YAML type: each is a located, typed error (exit 1) within 2 s and 200 MB."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from orchestrator.errors import SiteError
from orchestrator.site import load_text
from orchestrator.site.loader import embedded_text

BASE = embedded_text("lab")


def variant(old: str, new: str) -> str:
    assert old in BASE, old
    return BASE.replace(old, new, 1)


def alias_bomb(levels: int = 9) -> str:
    """The billion laughs: 9 levels of 9 aliases (1.6 KB of YAML, 9**9 values)."""
    out = 'a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]\n'
    for i in range(1, levels):
        prev, cur = chr(96 + i), chr(97 + i)
        out += f"{cur}: &{cur} [{', '.join(['*' + prev] * 9)}]\n"
    return out


MANY_ALIASES = "x: &x 1\ny: [" + ", ".join(["*x"] * 150) + "]\n"

# (case id, site text, exact error message)
CASES = [
    ("alias-bomb", alias_bomb(),
     "site.yaml:1: too many alias expansions (the document expands to more than 20000 "
     "values)"),
    ("many-aliases", MANY_ALIASES,
     "site.yaml:2: too many alias expansions (more than 100 aliases)"),
    ("deep-flow", "name: " + "[" * 60000, "site.yaml:1: nesting deeper than 32 levels"),
    ("deep-block", "a:\n" + "".join(" " * i + "b:\n" for i in range(1, 60)),
     "site.yaml:32: nesting deeper than 32 levels"),
    ("many-values", "x: [" + ", ".join(["1"] * 30000) + "]\n",
     "site.yaml:1: too many values (more than 20000)"),
    ("too-big", "name: lab\n" + "# padding\n" * 30000,
     "site.yaml: the site file is larger than 256 KiB"),
    ("date", variant("name: lab", "name: 2024-01-01"),
     "site.yaml:4 name: expected a plain value, got a date/timestamp 2024-01-01 (quote it if "
     "it is a string)"),
    ("timestamp", variant("delete_delay: 2", "delete_delay: 2001-12-14t21:59:43.10-05:00"),
     "site.yaml:19 media.delete_delay: expected a plain value, got a date/timestamp "
     "2001-12-14t21:59:43.10-05:00 (quote it if it is a string)"),
    ("binary", variant("name: lab", "name: !!binary aGVsbG8="),
     "site.yaml:4 name: expected a plain value, got binary data (!!binary) aGVsbG8= (quote "
     "it if it is a string)"),
    ("set", variant("domains: [lab.invalid]", "domains: !!set {a: null}"),
     "site.yaml:10 edges[0].domains: expected a plain value, got a set (!!set) (quote it if "
     "it is a string)"),
    ("local-tag", variant("name: lab", "name: !secret lab"),
     "site.yaml:4 name: expected a plain value, got a value tagged !secret"),
    ("long-value", variant("name: lab", "name: " + "x" * 100_000),
     "site.yaml:4 name: must be at most 1024 characters, got 100000"),
    ("long-invalid-name", variant("name: edge1", "name: " + "E" * 500),
     "site.yaml:6 edges[0].name: '" + "E" * 60 + "… (500 characters)' is not a valid name "
     "(expected lower-case letters, digits, '-' or '_', starting with a letter, at most 32 "
     "characters)"),
    ("long-list", variant("domains: [lab.invalid]",
                          "domains: [" + ", ".join(f"d{i}" for i in range(100)) + "]"),
     "site.yaml:10 edges[0].domains: must have at most 64 item(s)"),
    ("long-wrong-type", variant("delete_delay: 2", "delete_delay: " + "y" * 5000),
     'site.yaml:19 media.delete_delay: expected an integer, got a string "' + "y" * 59
     + '… (5002 characters)'),
    ("secrets-in-recordings", BASE + "security: {secrets_dir: /var/spool/siprecctl/keys}\n",
     "site.yaml:44 security.secrets_dir: '/var/spool/siprecctl/keys' is inside the recording "
     "directory /var/spool/siprecctl: siprecctl never writes there"),
    ("relative-secrets-dir", BASE + "security: {secrets_dir: secrets}\n",
     "site.yaml:44 security.secrets_dir: 'secrets' is not an absolute path (no quotes, "
     "backslashes or line breaks)"),
    ("duplicate-token", variant("  api: {address: 127.0.0.1, port: 8090}",
                                "  api:\n    tokens: [{name: ops, role: operator}, "
                                "{name: ops, role: readonly}]"),
     "site.yaml:43 controller.api.tokens[1].name: duplicate name 'ops' (already used by "
     "controller.api.tokens[0])"),
    ("bad-token-role", variant("  api: {address: 127.0.0.1, port: 8090}",
                               "  api:\n    tokens: [{name: ops, role: admin}]"),
     "site.yaml:43 controller.api.tokens[0].role: expected one of 'operator' or 'readonly', "
     'got "admin"'),
]


@pytest.mark.parametrize("case,text,message", CASES, ids=[c[0] for c in CASES])
def test_located_error(case: str, text: str, message: str) -> None:
    t0 = time.monotonic()
    with pytest.raises(SiteError) as exc:
        load_text(text, file="site.yaml")
    assert str(exc.value) == message
    assert time.monotonic() - t0 < 2.0


@pytest.mark.parametrize("case,text,message", CASES, ids=[c[0] for c in CASES])
def test_cli_bounded_time_and_memory(case: str, text: str, message: str,
                                     tmp_path: Path) -> None:
    """The whole CLI, as a user runs it: exit 1, the located message, < 2 s, < 200 MB."""
    site = tmp_path / "site.yaml"
    site.write_text(text)
    # Linux carries a process's peak RSS across fork and exec (exec_mmap keeps the old
    # image's high-water mark), so the CLI is started by a small launcher, not by pytest
    # (hundreds of MB after the integration tests): its own peak is what is measured
    launcher = ("import os, resource, subprocess, sys; "
                "p = subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL, "
                "stderr=subprocess.PIPE); sys.stderr.buffer.write(p.stderr); "
                "print(p.returncode, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)")
    t0 = time.monotonic()
    proc = subprocess.run([sys.executable, "-c", launcher, sys.executable, "-m",
                           "orchestrator.cli", "site", "validate", str(site)],
                          capture_output=True, text=True, timeout=30)
    elapsed = time.monotonic() - t0
    err = proc.stderr
    code, maxrss = (int(x) for x in proc.stdout.split())
    assert code == 1, err
    assert message.replace("site.yaml", str(site), 1) in err
    assert "Traceback" not in err
    assert elapsed < 2.0, f"{elapsed:.2f} s"
    assert maxrss < 200 * 1024, f"peak RSS {maxrss} KB"
