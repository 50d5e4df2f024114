"""sitegpt-bridge: SiteGPT's webhooks delivered to Slack, Jira and the CRM, durably and once."""

__version__ = "0.1.0"
