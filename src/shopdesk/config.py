"""Settings read from the environment (prefix SHOPDESK_)."""
from functools import lru_cache
from pathlib import Path

from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="SHOPDESK_", env_file=".env", extra="ignore")

    database_url: str = ""
    var_dir: Path = Path("var")
    # Signs tokens, cookies and notifications. Unset: a random key kept in var/secret_key, so a
    # laptop install is not signed with a well-known string and survives restarts.
    secret_key: str = ""
    # Set on every node when several server processes share the chat (Redis pub/sub fan-out).
    redis_url: str = ""
    # Messages one chat visitor may send per minute over all their sockets.
    chat_visitor_messages_per_minute: int = 120
    # An agent whose last socket (on every node) has been closed this long becomes offline.
    chat_presence_grace_s: float = 60.0
    # The chat's answerer when a merchant turns bot_first on: `module:callable` (docs/chat.md), registered at
    # startup; empty: the built-in one, which greets and hands every chat to a person.
    chat_bot: str = ""
    # How long the answerer may think about one message before a person takes over.
    chat_bot_timeout_s: float = 3.0
    # Take the visitor's IP from X-Forwarded-For (the left-most address): only behind a proxy we trust.
    trusted_proxy: bool = False
    base_url: str = "http://127.0.0.1:8000"
    # Outbound mail; an empty host keeps mail in the outbox as 'skipped' instead of failing.
    smtp_host: str = ""
    smtp_port: int = 25
    mail_from: str = "ShopDesk <noreply@shopdesk.local>"
    # WeChat's API (access tokens, 客服消息); tests point it at a stub on loopback.
    wechat_api_base: str = "https://api.weixin.qq.com"
    # Where the sandbox payment provider listens; by default the app serves it itself.
    sandbox_psp_url: str = ""
    run_jobs_in_process: bool = True
    # The everyday after-sales steps in fixed SQL on PostgreSQL (decision 0011); off: always the do_*.
    fast_path: bool = True
    job_interval_s: float = 1.0
    log_level: str = "INFO"
    upload_max_bytes: int = 10 * 1024 * 1024
    # A worker's claim on a refund; a worker killed mid-call loses it after this long.
    refund_lease_s: float = 30.0
    refund_retry_base_s: float = 2.0

    def model_post_init(self, __context) -> None:
        if not self.secret_key:
            import secrets

            path = self.var_dir / "secret_key"
            if not path.exists():
                self.var_dir.mkdir(parents=True, exist_ok=True)
                path.write_text(secrets.token_urlsafe(48))
                path.chmod(0o600)
            self.secret_key = path.read_text().strip()

    @property
    def effective_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        self.var_dir.mkdir(parents=True, exist_ok=True)
        return f"sqlite+aiosqlite:///{(self.var_dir / 'shopdesk.db').resolve()}"

    @property
    def effective_sandbox_psp_url(self) -> str:
        return self.sandbox_psp_url or f"{self.base_url}/sandbox-psp"


@lru_cache
def get_settings() -> Settings:
    return Settings()


def node_modules() -> Path:
    """The front-end packages from the npm registry: the checkout's (editable install), else the working directory's."""
    here = Path(__file__).resolve().parent
    return next((p for p in (here.parent.parent / "node_modules", Path.cwd() / "node_modules") if p.exists()),
                Path.cwd() / "node_modules")
