"""The one table of provider facts.

Every limit the project enforces is read from here: validation and sharding of request files,
the local service posing as a provider, cost figures and the file-quota guard. Nothing else
hard-codes a limit. The facts come from the providers' public documents (see
shared/reference/providers.md); where a fact is undocumented the field is ``None`` and the code
that reads it must work either way.

This module is a leaf: it imports nothing from the rest of the package, so every layer (the local
service at the bottom, the providers, the domain, the Dagster face) can read it.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from typing import Any

__all__ = [
    "ALL_ENDPOINTS",
    "CUSTOM",
    "CUSTOM_ID_PATTERN",
    "GENERATE_CONTENT",
    "MEDIA_ENDPOINTS",
    "MESSAGES",
    "METADATA_MAX_KEY_CHARS",
    "METADATA_MAX_PAIRS",
    "METADATA_MAX_VALUE_CHARS",
    "PROFILES",
    "ProviderProfile",
    "TEXT_ENDPOINTS",
    "EXPIRES_AFTER_ANCHOR",
    "EXPIRES_AFTER_MAX_SECONDS",
    "EXPIRES_AFTER_MIN_SECONDS",
    "custom_profile",
    "endpoint_problem",
    "env_var_problem",
    "expires_after",
    "expires_after_problem",
    "get_profile",
    "resolve_profile",
    "metadata_problem",
    "model_problem",
    "parse_window",
    "profile_from_json",
    "profile_to_json",
    "window_problem",
]

#: The strictest custom_id rule of all providers (Anthropic's); ids that match it work everywhere.
CUSTOM_ID_PATTERN = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")

#: Batch metadata limits shared by every OpenAI-style provider.
METADATA_MAX_PAIRS = 16
METADATA_MAX_KEY_CHARS = 64
METADATA_MAX_VALUE_CHARS = 512

CHAT_COMPLETIONS = "/v1/chat/completions"
RESPONSES = "/v1/responses"
EMBEDDINGS = "/v1/embeddings"
COMPLETIONS = "/v1/completions"
MODERATIONS = "/v1/moderations"
IMAGES_GENERATIONS = "/v1/images/generations"
IMAGES_EDITS = "/v1/images/edits"
VIDEOS = "/v1/videos"
#: Endpoints answered with text, vectors or labels: those a pipeline's results read into columns.
TEXT_ENDPOINTS: tuple[str, ...] = (RESPONSES, CHAT_COMPLETIONS, EMBEDDINGS, COMPLETIONS, MODERATIONS)
#: Endpoints answered with images or video jobs: batchable at OpenAI (as its SDK's
#: ``batches.create`` lists them), sent and answered, but not read into a pipeline's columns.
MEDIA_ENDPOINTS: tuple[str, ...] = (IMAGES_GENERATIONS, IMAGES_EDITS, VIDEOS)
#: Every endpoint of OpenAI's Batch API.
ALL_ENDPOINTS: tuple[str, ...] = (*TEXT_ENDPOINTS, *MEDIA_ENDPOINTS)
#: Anthropic's Messages API: the one endpoint of its Message Batches (not an OpenAI endpoint).
MESSAGES = "/v1/messages"
#: Gemini's generateContent method: what every request of a Gemini batch calls (a
#: GenerateContentRequest; the model is the batch's, in its URL). Not a URL path of its own.
GENERATE_CONTENT = "generateContent"

_MB = 1024 * 1024
_HOUR = 3600
_DAY = 24 * _HOUR

#: OpenAI's expiry policy of a file, ``{"anchor": "created_at", "seconds": N}``: an upload's
#: ``expires_after`` (Files API) and a batch's ``output_expires_after`` (its output and error
#: files), N seconds after the file was created, from an hour to 30 days.
EXPIRES_AFTER_ANCHOR = "created_at"
EXPIRES_AFTER_MIN_SECONDS = _HOUR
EXPIRES_AFTER_MAX_SECONDS = 30 * _DAY

# kimi-k2.5 and k2.6 fix these sampling parameters; a body that sets them is rejected.
_KIMI_FIXED_PARAMS = frozenset({"temperature", "top_p", "n", "presence_penalty", "frequency_penalty"})

_WINDOW_RE = re.compile(r"^([1-9][0-9]*)([hd])$")


def parse_window(window: str) -> int:
    """Seconds in a completion window such as ``"24h"`` or ``"3d"``; ValueError if malformed."""
    match = _WINDOW_RE.match(window)
    if match is None:
        raise ValueError(f"completion_window {window!r} is not of the form <N>h or <N>d")
    count, unit = int(match.group(1)), match.group(2)
    return count * (_HOUR if unit == "h" else _DAY)


@dataclass(frozen=True)
class ProviderProfile:
    """What one provider's Batch API allows, as documented."""

    name: str
    base_url: str | None
    api_key_env: str | None
    endpoints: tuple[str, ...]
    max_file_bytes: int
    max_requests_per_file: int | None
    #: Exact window strings the provider accepts, or None when any window in the range is taken.
    completion_windows: tuple[str, ...] | None
    min_window_seconds: int
    max_window_seconds: int
    default_window: str
    one_model_per_file: bool = False
    #: model name -> body parameters that model rejects.
    forbidden_params: Mapping[str, frozenset[str]] = field(default_factory=dict)
    #: The only models its Batch API takes, where the provider documents them (None: any model).
    models: tuple[str, ...] | None = None
    #: Batch-purpose files an organisation may hold at once (None: no documented quota).
    file_quota: int | None = None
    #: The ``purpose`` values its Files API accepts on upload (OpenAI's by default).
    upload_purposes: tuple[str, ...] = ("assistants", "batch", "fine-tune", "vision", "user_data", "evals")
    supports_metadata: bool = True
    #: Fraction of the real-time price saved by the Batch API (0.5 = half price).
    batch_discount: float = 0.5
    #: Embedding inputs across all requests of one batch (None: no separate limit).
    max_embedding_inputs: int | None = None
    #: Delete input, output and error files once results are downloaded (quota-bound providers).
    delete_files_after_download: bool = False
    #: Console page of one batch, formatted with ``batch_id``; None where there is none.
    console_url: str | None = None
    #: The wire protocol: ``"openai"`` (an uploaded file, then a batch), ``"anthropic"``
    #: (Message Batches: requests inline, results at a URL, no metadata) or ``"gemini"`` (Batch
    #: Mode: a long-running operation per model, requests inline or in an uploaded file).
    protocol: str = "openai"
    #: The rule every custom_id of a batch must match (and be unique in the batch).
    custom_id_pattern: str = CUSTOM_ID_PATTERN.pattern
    #: Whether uploads take ``expires_after`` and batches ``output_expires_after`` (OpenAI's).
    supports_file_expiry: bool = False
    #: Gemini: the largest batch sent with its requests inline; a larger one goes as an uploaded
    #: file (None: the protocol has no inline form, or no file form).
    max_inline_bytes: int | None = None
    #: Environment variables tried for the key after ``api_key_env``, in order.
    api_key_fallback_envs: tuple[str, ...] = ()

    def window_allowed(self, window: str) -> bool:
        """Whether ``completion_window`` is one this provider accepts."""
        if self.completion_windows is not None:
            return window in self.completion_windows
        try:
            seconds = parse_window(window)
        except ValueError:
            return False
        return self.min_window_seconds <= seconds <= self.max_window_seconds

    def forbidden_for(self, model: str) -> frozenset[str]:
        """Body parameters ``model`` rejects on this provider."""
        return self.forbidden_params.get(model, frozenset())

    def batch_url(self, batch_id: str) -> str | None:
        return self.console_url.format(batch_id=batch_id) if self.console_url else None


_OPENAI_STYLE = dict(
    endpoints=ALL_ENDPOINTS,
    max_file_bytes=200 * _MB,
    max_requests_per_file=50_000,
    completion_windows=("24h",),
    min_window_seconds=_DAY,
    max_window_seconds=_DAY,
    default_window="24h",
    max_embedding_inputs=50_000,
    supports_file_expiry=True,
)

PROFILES: dict[str, ProviderProfile] = {
    "moonshot": ProviderProfile(
        name="moonshot",
        base_url="https://api.moonshot.ai/v1",
        api_key_env="MOONSHOT_API_KEY",
        endpoints=(CHAT_COMPLETIONS,),
        max_file_bytes=100 * _MB,
        max_requests_per_file=None,
        completion_windows=None,
        min_window_seconds=12 * _HOUR,
        max_window_seconds=7 * _DAY,
        default_window="24h",
        one_model_per_file=True,
        forbidden_params={"kimi-k2.5": _KIMI_FIXED_PARAMS, "kimi-k2.6": _KIMI_FIXED_PARAMS},
        # "Batch API currently only supports the kimi-k2.5 model" (Moonshot's Batch API guide).
        models=("kimi-k2.5",),
        file_quota=1000,
        upload_purposes=("batch", "image", "video"),
        batch_discount=0.4,
        delete_files_after_download=True,
        console_url=None,
    ),
    "openai": ProviderProfile(
        name="openai",
        base_url="https://api.openai.com/v1",
        api_key_env="OPENAI_API_KEY",
        console_url="https://platform.openai.com/batches/{batch_id}",
        **_OPENAI_STYLE,
    ),
    # A gateway with OpenAI's batch contract; its discount is the gateway's own pricing, 0.5 here
    # mirrors the upstream price it resells and can be overridden with custom_profile().
    "fastapi_ai": ProviderProfile(
        name="fastapi_ai",
        base_url="https://api.fastapi.ai/v1",
        api_key_env="FAST_API_KEY",
        **_OPENAI_STYLE,
    ),
    # Message Batches: requests inline (no file step), at most 100,000 of them or 256 MB a batch,
    # ended within 24 h (no window parameter: 24h is the only one), results kept 29 days, half
    # price, and no batch metadata: a batch is found again by its time, size and custom_ids.
    "anthropic": ProviderProfile(
        name="anthropic",
        base_url="https://api.anthropic.com/v1",
        api_key_env="ANTHROPIC_API_KEY",
        endpoints=(MESSAGES,),
        max_file_bytes=256 * _MB,
        max_requests_per_file=100_000,
        completion_windows=("24h",),
        min_window_seconds=_DAY,
        max_window_seconds=_DAY,
        default_window="24h",
        supports_metadata=False,
        batch_discount=0.5,
        console_url="https://console.anthropic.com/workspaces/default/batches/{batch_id}",
        protocol="anthropic",
        custom_id_pattern=r"^[a-zA-Z0-9_-]{1,64}$",
    ),
    # Gemini Batch Mode (Developer API): one model per batch (its URL names it), requests inline
    # up to 20 MB or as an uploaded JSONL file up to 2 GB, keyed by ``key``; a 24 h target, half
    # price. No metadata, but a free-text displayName: the provider carries the batch's tags in
    # it (``providers/gemini.py``), so batches are found again by their tags. The request count
    # of a file is not documented. Keys: GEMINI_API_KEY, or GOOGLE_API_KEY as the SDK reads it.
    "gemini": ProviderProfile(
        name="gemini",
        base_url="https://generativelanguage.googleapis.com/v1beta",
        api_key_env="GEMINI_API_KEY",
        api_key_fallback_envs=("GOOGLE_API_KEY",),
        endpoints=(GENERATE_CONTENT,),
        max_file_bytes=2 * 1024 * _MB,
        max_requests_per_file=None,
        completion_windows=("24h",),
        min_window_seconds=_DAY,
        max_window_seconds=_DAY,
        default_window="24h",
        one_model_per_file=True,
        upload_purposes=("batch",),
        batch_discount=0.5,
        console_url=None,
        protocol="gemini",
        max_inline_bytes=20 * _MB,
    ),
    "groq": ProviderProfile(
        name="groq",
        base_url="https://api.groq.com/openai/v1",
        api_key_env="GROQ_API_KEY",
        endpoints=(CHAT_COMPLETIONS,),
        max_file_bytes=100 * _MB,
        max_requests_per_file=None,
        completion_windows=None,
        min_window_seconds=_DAY,
        max_window_seconds=7 * _DAY,
        default_window="24h",
        batch_discount=0.5,
    ),
}


def custom_profile(base_url: str, *, name: str = "custom", **facts: object) -> ProviderProfile:
    """A profile for any OpenAI-compatible service: OpenAI's limits unless ``facts`` say otherwise."""
    base = ProviderProfile(name=name, base_url=base_url, api_key_env=None, **_OPENAI_STYLE)
    return replace(base, **facts)  # type: ignore[arg-type]


#: The provider name of any OpenAI-compatible service at a base URL of the user's (see custom_profile).
CUSTOM = "custom"


def resolve_profile(name: str, base_url: str | None = None) -> ProviderProfile:
    """The profile a provider name stands for: ``"custom"`` is :func:`custom_profile` at ``base_url``."""
    if name == CUSTOM:
        if not base_url:
            raise ValueError("provider 'custom' needs base_url: the OpenAI-compatible service's URL")
        return custom_profile(base_url)
    return get_profile(name)


def get_profile(name: str) -> ProviderProfile:
    """The profile called ``name``; ValueError naming the known ones otherwise."""
    try:
        return PROFILES[name]
    except KeyError:
        known = ", ".join(sorted(PROFILES))
        raise ValueError(f"unknown provider profile {name!r}; known: {known} (or custom_profile())") from None


# ---- the rules both sides apply: the client before sending, the local service on receipt --------


def endpoint_problem(profile: ProviderProfile, endpoint: Any) -> str | None:
    """Why ``profile``'s batches refuse ``endpoint``, or None."""
    if endpoint in profile.endpoints:
        return None
    return f"{profile.name} batches accept endpoints {', '.join(profile.endpoints)}, not {endpoint!r}"


def model_problem(profile: ProviderProfile, model: Any) -> str | None:
    """Why ``profile``'s Batch API refuses ``model``, where it documents its models; else None."""
    if profile.models is None or model in profile.models:
        return None
    return f"{profile.name}'s Batch API takes only the model {' or '.join(map(repr, profile.models))}, not {model!r}"


def window_problem(profile: ProviderProfile, window: Any) -> str | None:
    """Why ``profile`` refuses ``completion_window``, or None."""
    if isinstance(window, str) and profile.window_allowed(window):
        return None
    if profile.completion_windows is not None:
        allowed = ", ".join(profile.completion_windows)
    else:
        allowed = f"{profile.min_window_seconds // _HOUR}h to {profile.max_window_seconds // _HOUR}h"
    return f"{profile.name} does not accept completion_window {window!r} (allowed: {allowed})"


def expires_after(seconds: int) -> dict[str, Any]:
    """The expiry policy ``seconds`` after a file's creation, as the APIs take it."""
    return {"anchor": EXPIRES_AFTER_ANCHOR, "seconds": seconds}


def expires_after_problem(profile: ProviderProfile, policy: Any, param: str) -> str | None:
    """Why ``profile`` refuses the expiry policy ``policy`` given as ``param`` (``expires_after``,
    ``output_expires_after``), or None; None is no policy."""
    if policy is None:
        return None
    if not profile.supports_file_expiry:
        return f"{profile.name} does not take {param}"
    if not isinstance(policy, Mapping):
        return f"{param} must be an object {{'anchor': '{EXPIRES_AFTER_ANCHOR}', 'seconds': N}}, not {policy!r}"
    anchor, seconds = policy.get("anchor"), policy.get("seconds")
    if anchor != EXPIRES_AFTER_ANCHOR:
        return f"{param}.anchor must be '{EXPIRES_AFTER_ANCHOR}', not {anchor!r}"
    if type(seconds) is not int or not EXPIRES_AFTER_MIN_SECONDS <= seconds <= EXPIRES_AFTER_MAX_SECONDS:
        return (
            f"{param}.seconds must be an integer from {EXPIRES_AFTER_MIN_SECONDS} (1 hour) to "
            f"{EXPIRES_AFTER_MAX_SECONDS} (30 days), not {seconds!r}"
        )
    unknown = sorted(set(policy) - {"anchor", "seconds"})
    if unknown:
        return f"{param} takes anchor and seconds only, not {', '.join(map(repr, unknown))}"
    return None


def metadata_problem(metadata: Any) -> str | None:
    """Why batch ``metadata`` breaks the limits every OpenAI-style provider documents, or None."""
    if metadata is None:
        return None
    if not isinstance(metadata, Mapping):
        return "batch metadata must be an object of string keys and values"
    if len(metadata) > METADATA_MAX_PAIRS:
        return f"batch metadata has {len(metadata)} pairs; at most {METADATA_MAX_PAIRS} are allowed"
    for key, value in metadata.items():
        if not isinstance(key, str) or not isinstance(value, str):
            return f"batch metadata {key!r}: keys and values must be strings"
        if len(key) > METADATA_MAX_KEY_CHARS:
            return f"batch metadata key {key[:20]!r}...: keys are limited to {METADATA_MAX_KEY_CHARS} characters"
        if len(value) > METADATA_MAX_VALUE_CHARS:
            return f"batch metadata {key!r}: values are limited to {METADATA_MAX_VALUE_CHARS} characters"
    return None


_ENV_VAR_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def env_var_problem(name: Any, *, what: str = "api_key_env") -> str | None:
    """Why ``name`` is not the name of an environment variable (an API key pasted in its place), or None.

    The message never repeats the value: what is refused here is most likely a secret.
    """
    if isinstance(name, str) and _ENV_VAR_NAME.match(name):
        return None
    return (
        f"{what} must name an environment variable (letters, digits and _, such as MOONSHOT_API_KEY); "
        "the value given is not such a name and may be a key itself: put the key in the environment "
        "and name its variable here (the value is not shown)"
    )


# ---- a profile as JSON: a local service worker in another process applies exactly these facts ---


def profile_to_json(profile: ProviderProfile) -> dict[str, Any]:
    out: dict[str, Any] = {f.name: getattr(profile, f.name) for f in fields(profile)}
    out["forbidden_params"] = {model: sorted(params) for model, params in profile.forbidden_params.items()}
    return out


def profile_from_json(data: Mapping[str, Any]) -> ProviderProfile:
    values = dict(data)
    values["endpoints"] = tuple(values["endpoints"])
    if "api_key_fallback_envs" in values:
        values["api_key_fallback_envs"] = tuple(values["api_key_fallback_envs"])
    if "upload_purposes" in values:
        values["upload_purposes"] = tuple(values["upload_purposes"])
    if values.get("completion_windows") is not None:
        values["completion_windows"] = tuple(values["completion_windows"])
    if values.get("models") is not None:
        values["models"] = tuple(values["models"])
    values["forbidden_params"] = {m: frozenset(p) for m, p in values.get("forbidden_params", {}).items()}
    return ProviderProfile(**values)
