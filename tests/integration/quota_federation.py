"""The Federation the quota tests deploy with two ingress replicas: one priced model, quotas per plan."""

from __future__ import annotations

import os

from downcity import AIService, Federation, OpenAICompatibleProvider, Price
from downcity.quotas import Quota

PER_REQUEST = 500
RPM = 30
DAILY_CALLS = 50
TPM = 2_000

provider = OpenAICompatibleProvider(
    "quota-demo",
    env_key="DEEPSEEK_API_KEY",
    base_url=os.environ.get("EXAMPLE_UPSTREAM_URL", "http://127.0.0.1:9000/v1"),
)
model = provider.model("quota-flat", default=("text", "stream", "openai"), price=Price(per_request=PER_REQUEST))
federation = Federation(
    name="quota-test",
    quotas=[
        Quota(id="starter-rpm", metadata={"plan": "starter"}, requests_per_minute=RPM),
        Quota(id="daily-credits", metadata={"plan": "daily"}, credits_per_day=DAILY_CALLS * PER_REQUEST),
        Quota(id="tpm", metadata={"plan": "tpm"}, tokens_per_minute=TPM),
    ],
).use(AIService().use(model))
