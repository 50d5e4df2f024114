"""SiteGPT's events as typed models: what validates, what names the bad field, what dedups."""

from __future__ import annotations

import hashlib

import pytest

from bridge.event_rows import new_event
from bridge.events import (
    ESCALATION,
    LEAD,
    MESSAGE,
    Conversation,
    EscalationData,
    InvalidEvent,
    LeadData,
    MessageData,
    canonical_json,
    conversation_of,
    dedup_key,
    ordering_key,
    parse_event,
)
from bridge.samples import load_sample, webhook_sample_names

KINDS = {"message": MESSAGE, "escalation": ESCALATION, "lead": LEAD}
DATA = {MESSAGE: MessageData, ESCALATION: EscalationData, LEAD: LeadData}


@pytest.mark.parametrize("name", webhook_sample_names())
def test_every_sample_parses_as_its_own_kind_only(name):
    kind = KINDS[name.split("-")[0]]
    event = parse_event(kind, load_sample(name))
    assert event.event == kind and isinstance(event.data, DATA[kind])
    for other in set(KINDS.values()) - {kind}:
        with pytest.raises(InvalidEvent) as refused:
            parse_event(other, load_sample(name))
        assert refused.value.field == "event"


def test_message_fields_are_read_from_sitegpts_camel_case():
    data = parse_event(MESSAGE, load_sample("message-agent")).data
    assert isinstance(data, MessageData)
    assert (data.chatbot_id, data.thread_id, data.message_type, data.agent_name, data.agent_id) == (
        "chatbot_123", "thread_456", "AGENT_MESSAGE", "Dana", "agent_77")


def test_an_escalation_without_a_user_is_valid():
    data = parse_event(ESCALATION, load_sample("escalation-anonymous")).data
    assert isinstance(data, EscalationData) and data.user is None


def test_unknown_keys_are_kept_at_every_level():
    body = load_sample("escalation") | {"version": 2}
    body["data"] |= {"priority": "high"}
    body["data"]["user"] |= {"locale": "es"}
    event = parse_event(ESCALATION, body)
    assert event.model_extra == {"version": 2}
    assert isinstance(event.data, EscalationData) and event.data.user is not None
    assert event.data.model_extra == {"priority": "high"}
    assert event.data.user.model_extra == {"locale": "es"}


def test_lead_custom_fields_are_every_key_beyond_the_standard_ones():
    data = parse_event(LEAD, load_sample("lead-custom-fields")).data
    assert isinstance(data, LeadData)
    assert data.lead_details.custom_fields == {
        "Company": "Nuñez Consulting", "Team size": "11-50", "Interested in": "Enterprise plan"}
    assert parse_event(LEAD, load_sample("lead")).data.lead_details.custom_fields == {}


@pytest.mark.parametrize(("kind", "body", "field", "words"), [
    (MESSAGE, {}, "event", "required"),
    (MESSAGE, {"event": "ADD_MESSAGE", "data": {"threadId": "t"}}, "data.chatbotId", "required"),
    (MESSAGE, {"event": "ADD_MESSAGE", "data": {"chatbotId": "c", "threadId": 5}},
     "data.threadId", "string"),
    (MESSAGE, {"event": "ADD_MESSAGE", "data": {"chatbotId": "c", "threadId": "t",
                                                "sources": ["ok", 3]}}, "data.sources.1", "string"),
    (ESCALATION, {"event": "ADD_MESSAGE", "data": {}}, "event", "CONVERSATION_ESCALATED"),
    (LEAD, {"event": "NEW_LEAD_CAPTURE", "data": {"chatbotId": "c", "leadDetails": {}}},
     "data.leadDetails.id", "required"),
    (LEAD, [], "body", "dictionary"),
])
def test_an_invalid_event_names_the_field_and_what_is_wrong(kind, body, field, words):
    with pytest.raises(InvalidEvent) as refused:
        parse_event(kind, body)
    assert refused.value.field == field
    assert words in refused.value.message
    assert str(refused.value) == f"{field}: {refused.value.message}"


def test_canonical_json_sorts_keys_drops_whitespace_and_keeps_unicode():
    assert canonical_json({"b": [1, {"d": 2, "c": None}], "a": "ñ"}) == (
        '{"a":"ñ","b":[1,{"c":null,"d":2}]}')


def test_the_dedup_key_is_the_sha256_of_the_canonical_text():
    text = canonical_json(load_sample("lead"))
    assert dedup_key(text) == hashlib.sha256(text.encode("utf-8")).hexdigest()


def test_the_same_value_gives_the_same_stored_event_whatever_its_key_order():
    body = load_sample("message-bot-answer")
    reordered = {"data": dict(sorted(body["data"].items(), reverse=True)), "event": body["event"]}
    stored = [new_event(parse_event(MESSAGE, b), b, ["slack"]) for b in (body, reordered)]
    assert stored[0] == stored[1]
    assert stored[0].body == canonical_json(body)


@pytest.mark.parametrize(("name", "conversation", "key"), [
    ("message-visitor", Conversation("chatbot_123", "thread_456"), "chatbot_123/thread_456"),
    ("escalation-anonymous", Conversation("chatbot_123", "thread_789"), "chatbot_123/thread_789"),
    ("lead", None, "lead:chatbot_123/lead_789"),
])
def test_messages_and_escalations_share_their_conversations_order_leads_have_their_own(
        name, conversation, key):
    event = parse_event(KINDS[name.split("-")[0]], load_sample(name))
    assert conversation_of(event) == conversation
    assert ordering_key(event) == key


def test_a_conversations_dashboard_link_points_at_its_chat_history():
    assert Conversation("bot", "t1").dashboard_url == "https://sitegpt.ai/bot/chat-history/t1"


def test_only_messages_add_a_transcript_line():
    message = load_sample("message-visitor")
    line = new_event(parse_event(MESSAGE, message), message, []).message
    assert line is not None and (line.message_type, line.question, line.answer) == (
        "USER_MESSAGE", "I still can't log in, can I talk to a person?", None)
    lead = load_sample("lead")
    stored_lead = new_event(parse_event(LEAD, lead), lead, [])
    assert (stored_lead.message, stored_lead.conversation) == (None, None)
