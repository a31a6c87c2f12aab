"""The Serve application builder named by `serve_config.yaml` (`import_path: actors.app:build`)."""

import asyncio
import concurrent.futures
import logging
from pathlib import Path
from typing import Any, Literal, cast

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator
from ray.serve import Application
from ray.serve.deployment import Deployment

from actors.ingress import Ingress
from actors.placement import HEAD_PINNED, actor_options, check_resources
from actors.providers import ProviderDeployment
from downcity.ai.federation import Federation
from downcity.ai.federation_file import is_federation_file
from downcity.runtime import bootstrap, load_federation
from downcity.settings import Settings

logger = logging.getLogger("downcity.app")


class AppArgs(BaseModel):
    """The `args:` block of the application in `serve_config.yaml`."""

    model_config = ConfigDict(extra="forbid")

    federation: str = Field(
        description="the operator's Federation: an import path 'pkg.module:attr', or a federation YAML file"
    )
    database_url: str | None = Field(default=None, description="SQLAlchemy async URL; default embedded SQLite")
    data_dir: str = Field(default=".downcity", description="embedded data dir (SQLite file, master key)")
    ledger_shards: int = Field(default=1, ge=1, le=64)
    leases: bool = Field(default=False, description="admit calls on per-replica credit leases (billing.md)")
    max_body_bytes: int = Field(default=4 * 1024 * 1024, gt=0)
    provider_hop: Literal["handle", "relay"] = Field(
        default="handle", description="how the ingress reaches provider replicas: handle calls, or their byte relay"
    )
    provider_resources: dict[str, float] = Field(
        default_factory=dict, description="Ray resources each provider replica requests; empty: any node"
    )
    control_resources: dict[str, float] = Field(
        default_factory=lambda: dict(HEAD_PINNED), description="Ray resources the Ledger and JobManager request"
    )
    ready_requires_env: list[str] = Field(
        default_factory=list, description="provider keys every replica must read before /ready answers 200"
    )

    @field_validator("provider_resources", "control_resources")
    @classmethod
    def _positive_shares(cls, value: dict[str, float], info: ValidationInfo) -> dict[str, float]:
        return check_resources(value, info.field_name or "resources")

    @field_validator("federation")
    @classmethod
    def _absolute_file(cls, value: str) -> str:
        # Replicas and actors load the file again, from working directories of their own.
        return str(Path(value).resolve()) if is_federation_file(value) else value

    def settings(self) -> dict[str, Any]:
        """Plain settings for deployments; secrets stay in each process's environment, never in args."""
        return {
            "data_dir": str(Path(self.data_dir).resolve()),
            "database_url": self.database_url or Settings.from_env().database_url,
            "ledger_shards": self.ledger_shards,
            "leases": self.leases,
            "provider_hop": self.provider_hop,
            "max_body_bytes": self.max_body_bytes,
            "ready_requires_env": list(self.ready_requires_env),
        }


def _bootstrap(settings: Settings) -> None:
    # build() may run inside an event loop (serve's controller), so migrate on a thread of our own.
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        admin_key = pool.submit(asyncio.run, bootstrap(settings)).result()
    if admin_key is not None:
        path = settings.data_dir / "admin.key"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(admin_key + "\n")
        path.chmod(0o600)
        logger.warning("generated an admin key; it is in %s (0600): read it once, then delete the file", path)


def build(args: AppArgs) -> Application:
    """Load the federation, migrate the database, then compose the app's deployments."""
    federation = load_federation(args.federation)
    settings = args.settings()
    _bootstrap(Settings.with_env_secrets(settings))
    return compose(args, federation, settings)


def compose(
    args: AppArgs, federation: Federation, settings: dict[str, Any], ingress_replicas: int | None = None
) -> Application:
    """The ingress and one `provider-<id>` deployment per provider, all on `settings`. `ingress_replicas` fixes the
    ingress's replica count in code; left None, Serve's config (num_replicas or autoscaling) decides alone."""
    providers = {
        provider_id: cast(Deployment, ProviderDeployment)
        .options(name=f"provider-{provider_id}", ray_actor_options=actor_options(args.provider_resources))
        .bind(args.federation, provider_id, settings)
        for provider_id in federation.providers
    }
    replicas: dict[str, Any] = {} if ingress_replicas is None else {"num_replicas": ingress_replicas}
    ingress = cast(Deployment, Ingress).options(name="ingress", **replicas)
    return ingress.bind(args.federation, settings, providers, args.control_resources)
