"""`verify.jira`, `verify.bitbucket` (`sha256=` HMAC of the raw body in `X-Hub-Signature`) and
`verify.shared_token` (GitLab's `X-Gitlab-Token`, aofd's Opsgenie header): pure checks, constant time."""

from __future__ import annotations

import pytest

from aofd.runtime import verify

VECTOR_SECRET = "It's a Secret to Everybody"
VECTOR_BODY = b"Hello, World!"
VECTOR_SIGNATURE = "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17"
"""The published `sha256=` HMAC vector (GitHub's documentation); Jira and Bitbucket use the same scheme."""


@pytest.mark.parametrize("check", [verify.jira, verify.bitbucket])
def test_the_published_vector_verifies_and_any_change_does_not(check: object) -> None:
    assert callable(check)
    check(secrets=["rotated-out", VECTOR_SECRET], body=VECTOR_BODY, signature=VECTOR_SIGNATURE)
    for body, signature, reason in [
        (b"Hello, World?", VECTOR_SIGNATURE, verify.SIGNATURE_INVALID),
        (VECTOR_BODY, VECTOR_SIGNATURE.upper().replace("SHA256", "sha256"), verify.SIGNATURE_INVALID),
        (VECTOR_BODY, VECTOR_SIGNATURE.removeprefix("sha256="), verify.MALFORMED),
        (VECTOR_BODY, None, verify.MALFORMED),
    ]:
        with pytest.raises(verify.Rejected) as caught:
            check(secrets=[VECTOR_SECRET], body=body, signature=signature)
        assert (401, reason) == (caught.value.status, caught.value.reason)
    with pytest.raises(verify.Rejected) as unset:
        check(secrets=[""], body=VECTOR_BODY, signature=VECTOR_SIGNATURE)
    assert (403, verify.SIGNATURE_INVALID) == (unset.value.status, unset.value.reason)


@pytest.mark.parametrize(
    ("secrets", "given", "outcome"),
    [
        (["tok-new", "tok-old"], "tok-old", None),
        (["tok-new"], " tok-new ", None),
        (["tok-new"], "tok-ne", (403, verify.SIGNATURE_INVALID)),
        (["tok-new"], "", (401, verify.MALFORMED)),
        (["tok-new"], None, (401, verify.MALFORMED)),
        ([""], "anything", (403, verify.SIGNATURE_INVALID)),
    ],
)
def test_shared_token(secrets: list[str], given: str | None, outcome: tuple[int, str] | None) -> None:
    if outcome is None:
        verify.shared_token(secrets=secrets, given=given, name="X-Gitlab-Token")
        return
    with pytest.raises(verify.Rejected) as caught:
        verify.shared_token(secrets=secrets, given=given, name="X-Gitlab-Token")
    assert outcome == (caught.value.status, caught.value.reason)
    assert "tok-new" not in caught.value.detail
