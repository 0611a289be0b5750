"""The site model's ``accounting`` setting: where each edge writes its own call records."""

from __future__ import annotations

import pytest

from orchestrator.errors import SiteError
from orchestrator.render import render_site
from orchestrator.site import load, load_text
from orchestrator.site.loader import embedded_text

BASE = embedded_text("lab")


@pytest.mark.parametrize(("extra", "message"), [
    ("accounting: {dir: /var/spool/siprecctl/accounting}",
     "site.yaml:44 accounting.dir: '/var/spool/siprecctl/accounting' is inside the recording "
     "directory /var/spool/siprecctl: siprecctl never writes there"),
    ("accounting: {dir: var/log/acc}",
     "site.yaml:44 accounting.dir: 'var/log/acc' is not an absolute path (no quotes, "
     "backslashes or line breaks)"),
    ("accounting: {dir: /etc/siprecctl/secrets/acc}",
     "site.yaml:44 accounting.dir: '/etc/siprecctl/secrets/acc' is inside "
     "security.secrets_dir: Kamailio writes the call records, and nothing but siprecctl's "
     "secrets belongs there"),
    ("accounting: {dir: /var}",
     "site.yaml:44 accounting.dir: the recording directory /var/spool/siprecctl is inside "
     "'/var': keep the call records apart from the recordings"),
    ("accounting: {dir: /var/log/siprecctl/accounting, mode: 700}",
     "site.yaml:44 accounting.mode: unknown key (expected one of: dir)"),
])
def test_bad_accounting_dir_is_a_located_error(extra: str, message: str) -> None:
    with pytest.raises(SiteError) as exc:
        load_text(BASE + extra + "\n", file="site.yaml")
    assert str(exc.value) == message


def test_each_edge_writes_into_its_own_directory() -> None:
    site = load_text(BASE + "accounting: {dir: /srv/acc/}\n", file="site.yaml")
    assert site.accounting.edge_dir("edge1") == "/srv/acc/edge1"
    cfg = next(r.content for r in render_site(site) if r.kind == "kamailio")
    assert 'modparam("acc", "db_url", "flatstore:/srv/acc/edge1")' in cfg
    assert load().accounting.dir == "/var/log/siprecctl/accounting"
