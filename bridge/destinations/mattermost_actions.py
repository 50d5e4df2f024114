"""The root post's buttons in Mattermost: which it shows, and the signature each one carries.

Mattermost calls a button's `integration.url` with its `integration.context` when someone
presses it. That context is kept on the server and never sent to clients, but the URL is the
bridge's own and anyone who can reach it may post there: the signature (HMAC-SHA256 over the
action and the conversation) stops them from forging an action for any conversation.
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass
from typing import Any

from pydantic import SecretStr

from bridge.destinations.mattermost_settings import MattermostSettings, mattermost_replies_on
from bridge.destinations.sitegpt_settings import sitegpt_api_key
from bridge.events import Conversation
from bridge.settings import Settings

# Mattermost finds a pressed button by its id, which must be letters and digits only.
TAKE_OVER = "takeover"
HAND_BACK = "handback"
CLAIM = "claim"
RESOLVE = "resolve"
MODE_ACTIONS = {TAKE_OVER: "AGENT", HAND_BACK: "AI"}  # the SiteGPT mode each asks for
HANDLING_ACTIONS = {CLAIM: "claim", RESOLVE: "resolve"}
LABELS = {CLAIM: "I'll take it", RESOLVE: "Resolve", TAKE_OVER: "Take over",
          HAND_BACK: "Hand back to AI"}
STYLES = {TAKE_OVER: "primary"}
# The signing key is derived from the bot token, a secret the bridge has whenever Mattermost
# is on; a new token makes new signatures, and the root posts get them at their next patch.
KEY_PURPOSE = b"sitegpt-bridge mattermost action"


@dataclass(frozen=True)
class ActionSigner:
    """Signs a button's action for one conversation, and checks such a signature."""

    key: bytes

    @classmethod
    def for_token(cls, bot_token: SecretStr) -> ActionSigner:
        token = bot_token.get_secret_value().encode()
        return cls(hmac.new(token, KEY_PURPOSE, hashlib.sha256).digest())

    def sign(self, action: str, conversation: str) -> str:
        # The action never holds a newline: the message splits one way only.
        message = f"{action}\n{conversation}".encode()
        return hmac.new(self.key, message, hashlib.sha256).hexdigest()

    def valid(self, action: Any, conversation: Any, signature: Any) -> bool:
        """Whether `signature` is this signer's for the action and conversation, compared in
        constant time; any other type, or a signature that is not ASCII, is simply wrong."""
        if not all(isinstance(value, str) for value in (action, conversation, signature)):
            return False
        if not signature.isascii() or "\n" in action:
            return False
        expected = self.sign(action, conversation)
        return hmac.compare_digest(signature.encode(), expected.encode())


def signer_for(mattermost: MattermostSettings) -> ActionSigner:
    assert mattermost.bot_token is not None
    return ActionSigner.for_token(mattermost.bot_token)


def offered(settings: Settings, chatbot_id: str) -> list[str]:
    """The buttons the root post of a chatbot's conversation shows, in order.

    None without `actions_url`; Take over and Hand back only while replies from Mattermost
    reach SiteGPT for this chatbot.
    """
    if settings.mattermost.actions_endpoint is None:
        return []
    modes = mattermost_replies_on(settings) and sitegpt_api_key(settings, chatbot_id) is not None
    return [CLAIM, RESOLVE, *((TAKE_OVER, HAND_BACK) if modes else ())]


def buttons(settings: Settings, conversation: Conversation) -> list[dict[str, Any]]:
    """The root post's buttons as Mattermost's message actions, each signed."""
    mattermost: MattermostSettings = settings.mattermost
    actions = offered(settings, conversation.chatbot_id)
    if not actions:
        return []
    signer = signer_for(mattermost)
    return [{"id": action, "type": "button", "name": LABELS[action],
             **({"style": STYLES[action]} if action in STYLES else {}),
             "integration": {"url": mattermost.actions_endpoint, "context": {
                 "action": action, "conversation": conversation.key,
                 "signature": signer.sign(action, conversation.key)}}}
            for action in actions]
