"""Knowledge graph from a mission statement, written by an LLM behind an OpenAI-compatible chat-completions API.

    python -m pclip_jax.kg.generate --mission "find VPN tunnels and remote access" \
        --endpoint http://localhost:8000/v1 --model NAME --out kg.yaml

The reply must be a YAML (or JSON) knowledge graph in the schema of `pclip_jax.graph.schema`; it is validated before
anything is written, and an invalid reply is rejected with the reason (`--attempts N` re-asks, quoting the reason).
Only the standard library talks HTTP (urllib). The API key, if the endpoint needs one, is read from the environment
variable named by `--api-key-env` (default OPENAI_API_KEY). Offline, use the shipped graphs in pclip_jax/graph/shipped/.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import sys
import urllib.error
import urllib.request
from typing import Sequence

import yaml

from pclip_jax.plumbing.errors import cli_errors
from pclip_jax.graph.schema import KGValidationError, KnowledgeGraph, parse_kg, save_kg

SERVICE_CLASSES = ("Web, Chat, VoIP, Streaming, FileTransfer, P2P, VPN/Tunnel, Email, Game, RemoteAccess, "
                   "Collaboration, Infrastructure, SocialNetwork, Cloud, IoT/Industrial, Database, CryptoCurrency, "
                   "Malware")

SYSTEM_PROMPT = f"""You design knowledge graphs for network traffic classification.
Reply with one YAML document and nothing else, in this schema:
name: <short_snake_case_name>
nodes:
  - id: <unique id>
    level: 0            # exactly one level-0 node: the mission
    name: <human name>
    descriptions: [<one or more plain-language sentences>]
  - id: <unique id>
    level: 1            # service classes / threat categories; parent is the mission node
    parent: <id of the level-0 node>
    name: <human name>
    descriptions: [<what such traffic looks like on the wire: protocols, handshakes, packet sizes, directions, timing>]
    aliases: [<other names, optional>]
  - id: <unique id>
    level: 2            # applications / families; parent is a level-1 node
    parent: <id of a level-1 node>
    name: <human name>
    descriptions: [<...>]
edges:                  # optional
  - {{type: related, source: <id>, target: <id>}}
Rules: every node has at least one non-empty description; ids are unique; levels 1 and 2 name a parent exactly one
level up; no cycles. Prefer these service class ids where they fit: {SERVICE_CLASSES}."""


class GenerationError(RuntimeError):
    """The endpoint could not be reached, answered with an error, or its reply was not a valid knowledge graph."""


def chat_completions_url(endpoint: str) -> str:
    """`http://host/v1` → `http://host/v1/chat/completions` (a full .../chat/completions URL is kept)."""
    endpoint = endpoint.rstrip("/")
    return endpoint if endpoint.endswith("/chat/completions") else endpoint + "/chat/completions"


def call_chat(endpoint: str, model: str, messages: list[dict], api_key: str | None = None,
              timeout: float = 120.0, temperature: float = 0.2) -> str:
    """POSTs a chat-completions request and returns the first choice's message content."""
    url = chat_completions_url(endpoint)
    body = json.dumps({"model": model, "messages": messages, "temperature": temperature}).encode()
    headers = {"Content-Type": "application/json"}
    if api_key:
        headers["Authorization"] = f"Bearer {api_key}"
    req = urllib.request.Request(url, data=body, headers=headers, method="POST")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            raw = resp.read()
    except urllib.error.HTTPError as e:
        detail = e.read()[:500].decode("utf-8", "replace")
        raise GenerationError(f"{url}: HTTP {e.code} {e.reason}: {detail}") from None
    except (urllib.error.URLError, TimeoutError, OSError) as e:
        raise GenerationError(f"{url}: cannot reach the endpoint: {getattr(e, 'reason', e)}") from None
    try:
        reply = json.loads(raw)
        content = reply["choices"][0]["message"]["content"]
    except (ValueError, KeyError, IndexError, TypeError) as e:
        raise GenerationError(f"{url}: not a chat-completions response ({type(e).__name__}: {e}): "
                              f"{raw[:300].decode('utf-8', 'replace')}") from None
    if not isinstance(content, str) or not content.strip():
        raise GenerationError(f"{url}: the reply has no message content")
    return content


def parse_reply(content: str, source: str = "LLM reply") -> KnowledgeGraph:
    """Extracts the YAML/JSON document from a reply (code fences allowed) and validates it into the schema.

    Raises `KGValidationError` with the reason when it is not a valid knowledge graph."""
    fenced = re.findall(r"```(?:ya?ml|json)?\s*\n(.*?)```", content, flags=re.S)
    text = fenced[0] if fenced else content
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise KGValidationError(f"{source}: not valid YAML/JSON: {e}") from None
    return parse_kg(data, source=source)


def generate_kg(mission: str, endpoint: str, model: str, api_key: str | None = None, attempts: int = 1,
                timeout: float = 120.0) -> KnowledgeGraph:
    """Asks the model for a knowledge graph of `mission`; re-asks up to `attempts` times, quoting the validation
    error. Raises `GenerationError` (with every rejection reason) when no reply is valid."""
    messages = [{"role": "system", "content": SYSTEM_PROMPT},
                {"role": "user", "content": f"Mission: {mission}\nWrite the knowledge graph."}]
    reasons = []
    for attempt in range(1, max(1, attempts) + 1):
        content = call_chat(endpoint, model, messages, api_key, timeout)
        try:
            return parse_reply(content, source=f"LLM reply {attempt}")
        except KGValidationError as e:
            reasons.append(str(e))
            messages += [{"role": "assistant", "content": content},
                         {"role": "user", "content": f"That graph is invalid: {e}. Reply with the corrected YAML."}]
    raise GenerationError("rejected: " + " | ".join(reasons))


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m pclip_jax.kg.generate", description=__doc__.split("\n\n")[0])
    p.add_argument("--mission", required=True, help='what to detect, e.g. "find VPN tunnels and remote access"')
    p.add_argument("--endpoint", required=True, help="OpenAI-compatible base URL, e.g. http://localhost:8000/v1")
    p.add_argument("--model", required=True, help="model name the endpoint serves")
    p.add_argument("--out", required=True, help="where to write the validated graph (YAML)")
    p.add_argument("--api-key-env", default="OPENAI_API_KEY", help="environment variable holding the API key")
    p.add_argument("--attempts", type=int, default=1, help="re-ask with the validation error this many times")
    p.add_argument("--timeout", type=float, default=120.0, help="seconds per request")
    p.add_argument("--verbose", action="store_true", help="full tracebacks on errors")
    args = p.parse_args(argv)
    with cli_errors(args.verbose) as status:  # GenerationError is a RuntimeError: one line, exit 1
        kg = generate_kg(args.mission, args.endpoint, args.model, os.environ.get(args.api_key_env),
                         args.attempts, args.timeout)
        save_kg(kg, args.out)
        counts = {lvl: len(kg.level_ids(lvl)) for lvl in (1, 2)}
        print(f"wrote {args.out}: graph {kg.name!r}, {counts[1]} classes, {counts[2]} applications")
    return status.code


if __name__ == "__main__":
    sys.exit(main())
