"""API input for webhooks."""
from pydantic import BaseModel, ConfigDict, Field


class WebhookIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    url: str = Field(min_length=8, max_length=500, pattern=r"^https?://")
    events: list[str] = Field(min_length=1, max_length=50)
    secret: str = Field(min_length=8, max_length=128)
