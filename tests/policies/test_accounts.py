"""Console accounts: roles after 三员分立, passwords (argon2id), lockout."""

from __future__ import annotations

import pytest
from argon2 import PasswordHasher

from exnode.policies import accounts as ac


def test_the_auditor_changes_nothing_and_only_the_auditor_reads_the_audit_trail():
    assert all(p.startswith("view:") for p in ac.PERMISSIONS["auditor"])
    assert all(p.startswith("view:") for p in ac.PERMISSIONS["readonly"])
    assert [r for r in ac.ROLES if ac.may(r, "view:audit")] == ["auditor"]


def test_duties_are_separated():
    assert ac.may("sysadmin", "members:manage") and not ac.may("sysadmin", "access:review")
    assert ac.may("secadmin", "access:review") and not ac.may("secadmin", "members:manage")
    assert not ac.may("secadmin", "config:manage")
    assert not any(ac.may(r, "grants:manage") for r in ac.ROLES if r != "secadmin")
    assert not any(ac.may(r, "accounts:manage") for r in ac.ROLES if r != "sysadmin")
    assert not ac.may("operator", "grants:manage") and ac.may("operator", "query:run")


def test_deny_unless_granted():
    assert not ac.may("root", "view:overview")
    assert not ac.may("sysadmin", "no:such-action")
    with pytest.raises(ac.AccountError, match="unknown role 'root'"):
        ac.check_role("root")


def test_separation_needs_the_three_administrators():
    ac.check_separation([])
    ac.check_separation([("alice", "sysadmin"), ("bob", "secadmin"), ("carol", "auditor"),
                         ("dan", "operator")])
    with pytest.raises(ac.AccountError, match=r"missing: auditor \(审计员\)"):
        ac.check_separation([("alice", "sysadmin"), ("bob", "secadmin")])


@pytest.mark.parametrize(("pw", "msg"), [
    ("Short1!", "at least 12"),
    ("alllowercaseletters", "three of"),
    ("ALICEalice1234", "account name"),
])
def test_weak_passwords_are_refused(pw, msg):
    with pytest.raises(ac.AccountError, match=msg):
        ac.check_password(pw, "alice")


def test_a_good_password_passes():
    ac.check_password("Correct-Horse-7", "alice")


@pytest.mark.parametrize("name", ["A", "a", "1abc", "with space", "x" * 40, "bob;drop"])
def test_bad_account_names(name):
    with pytest.raises(ac.AccountError):
        ac.check_name(name)


def test_hash_is_argon2id_and_verifies():
    h = ac.hash_password("Correct-Horse-7")
    assert h.startswith("$argon2id$") and "Correct" not in h
    assert ac.verify_password(h, "Correct-Horse-7") == (True, None)
    assert ac.verify_password(h, "correct-horse-7") == (False, None)
    assert ac.verify_password("not a hash", "x") == (False, None)


def test_a_hash_with_weaker_parameters_is_replaced_at_the_next_login():
    weak = PasswordHasher(time_cost=1, memory_cost=8, parallelism=1).hash("Correct-Horse-7")
    ok, new = ac.verify_password(weak, "Correct-Horse-7")
    assert ok and new is not None and new != weak
    assert ac.verify_password(new, "Correct-Horse-7") == (True, None)


def test_lockout_after_five_failures_and_its_end():
    lo = ac.Lockout()
    for i in range(4):
        assert lo.failed(100.0 + i) is False
    assert lo.failed(104.0) is True
    assert lo.locked(104.0 + 899) and not lo.locked(104.0 + 900)


def test_failures_outside_the_window_do_not_count_and_a_success_clears():
    lo = ac.Lockout(max_failures=3, window_s=60)
    lo.failed(0)
    lo.failed(1)
    assert lo.failed(100) is False  # the first two are older than the window
    lo.succeeded()
    lo.failed(101)
    assert lo.failed(102) is False
    assert lo.failed(103) is True
    lo.unlock()
    assert not lo.locked(104)
