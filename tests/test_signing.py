"""Message signing (pure, no Redis)."""
from minique import message
from minique.signing import sign, signing_payload, verify


def _msg():
    return message.make("t.add", (1, 2), None, "json", task_id="abc", queue="q")


def test_a_signed_message_verifies_under_its_key_only():
    signed = sign(_msg(), "secret")
    assert verify(signed, "secret") and verify(signed, b"secret")  # str and bytes keys are the same key
    assert not verify(signed, "other")


def test_unsigned_altered_or_resigned_messages_fail():
    signed = sign(_msg(), b"secret")
    assert not verify(_msg(), "secret")                                   # no signature at all
    assert not verify(signed._replace(body=b"[[9],{}]"), "secret")       # the body changed
    assert not verify(signed._replace(queue="other"), "secret")          # an envelope field changed
    assert not verify(sign(_msg(), "other"), "secret")                   # signed with another key


def test_the_signature_survives_the_wire_and_is_not_part_of_what_it_signs():
    plain = _msg()
    signed = sign(plain, "secret")
    assert verify(message.decode(signed.encode()), "secret")
    assert signing_payload(signed) == signing_payload(plain) == plain.encode()
