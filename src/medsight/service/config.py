"""``serve.yaml``: what the service keeps where, who may call it, which models it runs and which
studies go to which model (routes), validated with the key named on every mistake."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from medsight.core.errors import ConfigError
from medsight.engine.recipe import explain, read_yaml_mapping

if TYPE_CHECKING:
    import requests

__all__ = [
    "Auth",
    "Destination",
    "Dicom",
    "Http",
    "Match",
    "ModelEntry",
    "Orthanc",
    "Route",
    "ServeConfig",
    "load_serve_config",
]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Http(_Strict):
    """Where the HTTP API listens, and how large one request may be."""

    host: str = "127.0.0.1"
    port: int = Field(8042, ge=1, le=65535)
    max_upload_mb: float = Field(512.0, gt=0)


def ae_title(value: str) -> str:
    """A valid DICOM AE title (stripped).

    Raises:
        ValueError: empty, or not printable ASCII, or with a backslash.
    """
    if not value.strip() or "\\" in value or any(ord(c) < 32 or ord(c) > 126 for c in value):
        raise ValueError(f"{value!r} is not an AE title (1-16 printable ASCII characters, no backslash)")
    return value.strip()


AeTitle = Annotated[str, Field(min_length=1, max_length=16), AfterValidator(ae_title)]


class Dicom(_Strict):
    """The DICOM listener (a C-STORE SCP): PACS and modalities send studies to ``ae_title`` at
    ``host:port``. A study is complete once the associations that sent it are closed and nothing
    of it arrived for ``release_s`` seconds, or once nothing of it arrived for ``idle_s`` seconds
    (a sender that keeps its association open)."""

    ae_title: AeTitle = "MEDSIGHT"
    host: str = "127.0.0.1"
    port: int = Field(11112, ge=0, le=65535)  # 0: any free port (tests)
    idle_s: float = Field(10.0, gt=0)
    release_s: float = Field(1.0, ge=0)  # raise it for senders that use a new association per series
    allowed_callers: list[str] = Field(default_factory=list)  # calling AE titles accepted; empty: any
    max_associations: int = Field(32, ge=1, le=1000)  # at once; more are rejected as transient (sent again)


def _web_url(value: str | None) -> str | None:
    if value is not None and not re.match(r"https?://[^/\s]+", value):
        raise ValueError(f"{value!r} is not an http:// or https:// URL")
    return None if value is None else value.rstrip("/")


class _WebAccess(_Strict):
    """How to reach a DICOMweb or Orthanc server: its URL, and HTTP Basic credentials where it asks
    for them (the password in an environment variable, never in serve.yaml)."""

    url: str | None = None
    username: str | None = None
    password_env: str | None = None  # the environment variable holding the password
    timeout_s: float = Field(30.0, gt=0)  # connection and each request

    @field_validator("url")
    @classmethod
    def _url_valid(cls, value: str | None) -> str | None:
        return _web_url(value)

    def session(self, where: str) -> requests.Session:
        """A requests session with the credentials (none without ``username``).

        Raises:
            ConfigError: ``username`` is given and ``password_env`` is unset or names an empty variable.
        """
        import requests

        session = requests.Session()
        if self.username is not None:
            password = os.environ.get(self.password_env or "", "")
            if not password:
                raise ConfigError(f"{where}.username is given but the password is not: set {where}.password_env to "
                                  "an environment variable holding it, and export that variable")  # fmt: skip
            session.auth = (self.username, password)
        return session


class Destination(_WebAccess):
    """Where a route's results are sent: a DICOM node (a PACS, a viewer, a router) by C-STORE
    (``ae_title``, ``host``, ``port``), or a DICOMweb server by STOW-RS (``url``: its DICOMweb root,
    e.g. Orthanc's ``http://pacs:8042/dicom-web``). ``max_attempts`` tries, the first wait ``retry_s``
    doubling each time (at most an hour); after the last the delivery is dead-lettered (kept,
    listed, retried on demand: nothing is lost)."""

    ae_title: AeTitle | None = None
    host: str | None = None
    port: int | None = Field(None, ge=1, le=65535)
    calling_ae_title: AeTitle = "MEDSIGHT"
    max_attempts: int = Field(5, ge=1, le=100)
    retry_s: float = Field(30.0, gt=0)

    @model_validator(mode="after")
    def _one_way(self) -> Destination:
        dimse = [k for k in ("ae_title", "host", "port") if getattr(self, k) is not None]
        if self.url is not None and dimse:
            raise ValueError(f"give either url (STOW-RS) or ae_title, host and port (C-STORE), not both "
                             f"(found url and {', '.join(dimse)})")  # fmt: skip
        if self.url is None and len(dimse) < 3:
            missing = [k for k in ("ae_title", "host", "port") if getattr(self, k) is None]
            raise ValueError(f"a destination needs ae_title, host and port (C-STORE) or url (STOW-RS); "
                             f"missing {', '.join(missing)}")  # fmt: skip
        if self.username is not None and self.url is None:
            raise ValueError("username and password_env are for a url (STOW-RS) destination")
        return self

    def describe(self) -> str:
        """Where it is, in one line."""
        if self.url is not None:
            return f"STOW-RS {self.url}"
        return f"C-STORE {self.ae_title}@{self.host}:{self.port} (as {self.calling_ae_title})"


class Orthanc(_WebAccess):
    """Orthanc as the service's edge: studies that Orthanc reports stable (its ``/changes``, each
    study once ``StableAge`` passed without a new instance) are pulled with WADO-RS from its
    DICOMweb plugin, and processed; send results back with a destination whose url is the same
    DICOMweb root. At the very first start, ``history: false`` begins from Orthanc's latest change
    (studies already there are left alone); ``true`` takes every study Orthanc holds."""

    url: str  # Orthanc's REST root, e.g. http://127.0.0.1:8042
    dicomweb: str = "dicom-web"  # the DICOMweb plugin's root under url (its DicomWeb.Root)
    poll_s: float = Field(2.0, gt=0)
    history: bool = False

    @property
    def dicomweb_url(self) -> str:
        """The DICOMweb root's URL."""
        return f"{self.url}/{self.dicomweb.strip('/')}"


class Auth(_Strict):
    """Where the API tokens are: an environment variable holding ``name=token`` pairs (or bare tokens)
    separated by commas, and/or a file of one ``name token`` (or bare token) per line. Tokens never
    sit in serve.yaml itself; every endpoint but ``/health`` needs one."""

    tokens_env: str | None = "MEDSIGHT_API_TOKENS"
    tokens_file: Path | None = None

    def tokens(self) -> dict[str, str]:
        """``{token: name}`` from the environment variable and the file.

        Raises:
            ConfigError: the file is missing, or neither gives a token.
        """
        found: dict[str, str] = {}
        entries: list[str] = []
        if self.tokens_env and os.environ.get(self.tokens_env):
            entries += [e.replace("=", " ", 1) for e in os.environ[self.tokens_env].split(",")]
        if self.tokens_file is not None:
            if not self.tokens_file.is_file():
                raise ConfigError(f"auth.tokens_file {self.tokens_file} does not exist; make it (one 'name token' "
                                  "per line) or remove the key")  # fmt: skip
            entries += [line for line in self.tokens_file.read_text().splitlines() if not line.startswith("#")]
        for entry in (e.split() for e in entries):
            if not entry:
                continue
            name, token = (entry[0], entry[1]) if len(entry) > 1 else (f"token-{len(found) + 1}", entry[0])
            if len(token) < 16:
                raise ConfigError(f"the API token of {name!r} is shorter than 16 characters; make a longer one "
                                  "(e.g. python -c 'import secrets; print(secrets.token_urlsafe())')")  # fmt: skip
            found[token] = name
        if not found:
            where = " or ".join(
                w
                for w in (
                    self.tokens_env and f"the environment variable {self.tokens_env}",
                    self.tokens_file and f"the file {self.tokens_file}",
                )
                if w
            )
            raise ConfigError(f"the service needs at least one API token and found none in {where or 'nothing'}: "
                              f"e.g. export {self.tokens_env or 'MEDSIGHT_API_TOKENS'}=me=$(python -c "
                              "'import secrets; print(secrets.token_urlsafe())')")  # fmt: skip
        return found


class ModelEntry(_Strict):
    """A model the service runs: a package of ``medsight export`` (or a run folder)."""

    package: Path
    backend: Literal["auto", "torch", "onnx"] = "auto"
    dicom_overlay: bool = False  # also a secondary capture of the label map (a 2D classifier: its heat map)
    dicom_seg: Literal["binary", "fractional"] = "binary"  # fractional: each structure's probability (segmentation)


class Match(_Strict):
    """Which series a route takes: each given key must match (values compared without case); a
    series matching none of the study's routes is left alone."""

    modality: list[str] = Field(default_factory=list)
    body_part: list[str] = Field(default_factory=list)  # BodyPartExamined
    series_description: str | None = None  # a regular expression searched in SeriesDescription, any case
    sop_class: list[str] = Field(default_factory=list)  # SOP Class UIDs

    @field_validator("series_description")
    @classmethod
    def _compiles(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                re.compile(value)
            except re.error as exc:
                raise ValueError(f"{value!r} is not a regular expression: {exc}") from None
        return value


class Route(_Strict):
    """Studies whose series match go to ``model``; ``score`` (a column of the model's predictions, its
    largest value over the study's inputs) at or above ``threshold`` puts the study at the top of the
    worklist (notify only: no study is ever hidden)."""

    name: str
    model: str
    match: Match = Field(default_factory=Match)
    score: str | None = None
    threshold: float | None = None
    send_to: list[str] = Field(default_factory=list)  # destinations the results are sent to

    @model_validator(mode="after")
    def _threshold_needs_score(self) -> Route:
        if self.threshold is not None and self.score is None:
            raise ValueError(f"route {self.name!r}: a threshold needs the score column it applies to (score: ...)")
        return self


class ServeConfig(_Strict):
    """The whole serve.yaml."""

    storage: Path = Path("medsight-service")  # spool, results and (by default) the SQLite database
    database: str | None = None  # SQLAlchemy URL; default sqlite:///<storage>/service.db
    http: Http = Field(default_factory=Http)
    dicom: Dicom | None = None  # the DICOM listener; off unless given
    orthanc: Orthanc | None = None  # Orthanc as the edge (studies pulled by DICOMweb); off unless given
    destinations: dict[str, Destination] = Field(default_factory=dict)
    auth: Auth = Field(default_factory=Auth)
    models: dict[str, ModelEntry]
    routes: list[Route] = Field(min_length=1)
    poll_s: float = Field(1.0, gt=0)  # how often the worker looks for queued studies when not woken
    lease_s: float = Field(60.0, ge=1)  # a running job whose instance went quiet this long is queued again

    @model_validator(mode="after")
    def _routes_name_models(self) -> ServeConfig:
        for route in self.routes:
            if route.model not in self.models:
                raise ValueError(f"route {route.name!r} names the model {route.model!r}, which is not under models "
                                 f"({', '.join(self.models) or 'none'})")  # fmt: skip
            unknown = [d for d in route.send_to if d not in self.destinations]
            if unknown:
                raise ValueError(f"route {route.name!r} sends to {', '.join(map(repr, unknown))}, which is not under "
                                 f"destinations ({', '.join(self.destinations) or 'none'})")  # fmt: skip
        names = [r.name for r in self.routes]
        if len(set(names)) != len(names):
            raise ValueError(f"route names must differ: {names}")
        return self

    @property
    def database_url(self) -> str:
        """The database's SQLAlchemy URL."""
        return self.database or f"sqlite:///{(self.storage / 'service.db').resolve()}"


def load_serve_config(path: str | os.PathLike[str]) -> ServeConfig:
    """Read and validate a serve.yaml; relative paths in it are taken from its folder.

    Raises:
        ConfigError: missing file, not YAML, or a key or value wrong (named, with the closest key).
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path} does not exist: give the service's configuration (see docs/service.md)")
    try:
        config = ServeConfig(**read_yaml_mapping(path, "sections (storage, models, routes...)"))
    except ValidationError as exc:
        raise ConfigError(f"invalid {path.name}: {explain(exc, ServeConfig)}") from None
    base = path.resolve().parent
    resolved = {n: m.model_copy(update={"package": base / m.package}) for n, m in config.models.items()}
    auth = config.auth
    if auth.tokens_file is not None:
        auth = auth.model_copy(update={"tokens_file": base / auth.tokens_file})
    return config.model_copy(update={"storage": base / config.storage, "models": resolved, "auth": auth})
