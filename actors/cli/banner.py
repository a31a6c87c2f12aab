"""What `downcity up` prints once ready: the URL, the demo token and one copy-paste example per pathway.

Printed with plain `print`: rich hard-wraps at 80 columns when stdout is not a terminal, which breaks tokens
copied from a log file or CI output.
"""

from __future__ import annotations

import json
import shlex
import sys
from dataclasses import dataclass

from downcity.demo.images import IMAGE_DATA_URL

DEMO_CITY = "demo"
DEMO_USER = "demo-user"
BATCH_PROMPTS = ("a red fox", "a lighthouse at dusk")


@dataclass(frozen=True)
class Example:
    """One copy-paste example: a `# title` line, then shell code that runs as printed."""

    title: str
    code: str


@dataclass(frozen=True)
class DemoSeed:
    """What `--demo` seeded: the demo user's token, and the Ray address (and auth mode) batch drivers join."""

    user_token: str
    ray_address: str
    ray_auth_mode: str | None = None


@dataclass(frozen=True)
class Serving:
    """What a running `downcity up` tells scripts and people."""

    url: str
    federation: str
    admin_key: str | None = None
    demo: DemoSeed | None = None

    def to_json(self) -> str:
        """One JSON object: the URL and, for the demo, the city, user and token; the admin key once."""
        data = {"url": self.url}
        if self.demo is not None:
            data |= {"city_id": DEMO_CITY, "user_id": DEMO_USER, "user_token": self.demo.user_token}
        else:
            data["federation"] = self.federation
        if self.admin_key is not None:
            data["admin_key"] = self.admin_key
        return json.dumps(data)


def _curl(url: str, token: str, route: str, body: object, *flags: str) -> str:
    return shlex.join(
        [
            "curl",
            "-s",
            *flags,
            f"{url}/v1/ai/{route}",
            "-H",
            f"Authorization: Bearer {token}",
            "-H",
            "Content-Type: application/json",
            "-d",
            json.dumps(body),
        ]
    )


def _python(source: str) -> str:
    return f"{shlex.quote(sys.executable)} -c {shlex.quote(source)}"


def _openai(url: str, token: str, stream: bool) -> str:
    client = f"from openai import OpenAI; c = OpenAI(base_url='{url}/v1/ai', api_key='{token}'); "
    messages = "messages=[{'role': 'user', 'content': 'Hello Downcity'}]"
    if not stream:
        return _python(
            client + f"print(c.chat.completions.create(model='demo-chat', {messages}).choices[0].message.content)"
        )
    return _python(
        client
        + "print(''.join(e.choices[0].delta.content or '' for e in "
        + f"c.chat.completions.create(model='demo-chat', {messages}, stream=True) if e.choices))"
    )


def _image_script(url: str, token: str) -> str:
    lines = [
        f"{shlex.quote(sys.executable)} - <<'EOF'",
        "import time, httpx",
        f"api = httpx.Client(base_url='{url}/v1/ai', headers={{'Authorization': 'Bearer {token}'}})",
        "job = api.post('/image/create', json={'prompt': 'a lighthouse at dusk', 'count': 2}).json()",
        "while job['status'] in ('queued', 'running'):",
        "    time.sleep((job.get('poll_after_ms') or 1000) / 1000)",
        "    job = api.post('/image/result', json={'job_id': job['job_id']}).json()",
        "print(job['status'], [part['mediaType'] for part in job['result']['parts']])",
        "EOF",
    ]
    return "\n".join(lines)


def _batch(ray_address: str, ray_auth_mode: str | None) -> str:
    command = [sys.executable, "-m", "examples.batch_images", "--address", ray_address]
    command += ["--city", DEMO_CITY, "--user", DEMO_USER, *BATCH_PROMPTS]
    # Ray sends its auth token only to clusters it discovered itself, not to one named by address.
    auth = [f"RAY_AUTH_MODE={ray_auth_mode}"] if ray_auth_mode else []
    return shlex.join([*auth, *command])


def demo_examples(url: str, token: str, ray_address: str, ray_auth_mode: str | None = None) -> list[Example]:
    """Every demo pathway: text, stream, chat (plain and streaming), media fallback, image jobs and batch."""
    hello = {"prompt": "Hello Downcity"}
    picture = {
        "messages": [
            {
                "role": "user",
                "parts": [
                    {"type": "text", "text": "What is this?"},
                    {"type": "file", "mediaType": "image/png", "url": IMAGE_DATA_URL},
                ],
            }
        ]
    }
    return [
        Example("Text", _curl(url, token, "text", hello)),
        Example("Stream (AI SDK UI message stream)", _curl(url, token, "stream", hello, "-N")),
        Example("Chat completions with the openai client", _openai(url, token, stream=False)),
        Example("Streaming chat completions", _openai(url, token, stream=True)),
        Example("Media fallback: an image sends demo-chat's call to demo-vision", _curl(url, token, "text", picture)),
        Example("Image job: create, then poll image_result as poll_after_ms says", _image_script(url, token)),
        Example("Batch of image jobs as Ray tasks (run from the repository root)", _batch(ray_address, ray_auth_mode)),
    ]


def banner(serving: Serving) -> str:
    """The text people read: for the demo, the token and every example, each example after its title."""
    demo = serving.demo
    if demo is None:
        lines = [f"Downcity is serving {serving.federation} on {serving.url}"]
    else:
        lines = [
            f"Downcity demo is serving on {serving.url}  (DEMO upstream: echoes prompts)",
            f"city_id: {DEMO_CITY}   user_id: {DEMO_USER}",
            f"user_token: {demo.user_token}",
        ]
    if serving.admin_key is not None:
        lines.append(f"admin_key (shown once): {serving.admin_key}")
    if demo is not None:
        for example in demo_examples(serving.url, demo.user_token, demo.ray_address, demo.ray_auth_mode):
            lines += ["", f"# {example.title}", example.code]
        lines.append("")
    lines.append("Press Ctrl-C to stop.")
    return "\n".join(lines)
