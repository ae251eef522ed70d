"""Projects and API tokens. A token is shown once, when it is made; the database keeps only its SHA-256."""

from __future__ import annotations

import datetime as dt
import hashlib
import secrets
from dataclasses import dataclass

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from .models import ApiToken, Project, utcnow

TOKEN_PREFIX = "gcs_"
# Refresh a token's last_used_at at most this often, so reads do not turn into a write per request.
LAST_USED_RESOLUTION = dt.timedelta(seconds=60)


def hash_token(token: str) -> str:
    """SHA-256 hex digest of a token. Tokens carry 256 random bits, so a fast hash is enough (no salt/KDF)."""
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def get_or_create_project(session: Session, name: str) -> Project:
    project = session.scalar(select(Project).where(Project.name == name))
    if project is None:
        project = Project(name=name)
        session.add(project)
        session.flush()
    return project


@dataclass(frozen=True)
class NewToken:
    id: int
    project: str
    token: str


def create_token(session: Session, project_name: str, name: str | None = None) -> NewToken:
    """Make a token for ``project_name`` (creating the project) and return it in clear, this once."""
    project = get_or_create_project(session, project_name)
    token = TOKEN_PREFIX + secrets.token_urlsafe(32)
    row = ApiToken(project_id=project.id, name=name, token_hash=hash_token(token), prefix=token[:12])
    session.add(row)
    session.flush()
    return NewToken(id=row.id, project=project.name, token=token)


def authenticate(session: Session, token: str) -> ApiToken | None:
    """The live (not revoked) token row matching ``token``, or None."""
    row = session.scalar(
        select(ApiToken).where(ApiToken.token_hash == hash_token(token), ApiToken.revoked_at.is_(None))
    )
    if row is not None:
        now = utcnow()
        if row.last_used_at is None or now - row.last_used_at > LAST_USED_RESOLUTION:
            session.execute(update(ApiToken).where(ApiToken.id == row.id).values(last_used_at=now))
            session.commit()
    return row


def list_tokens(session: Session, project_name: str | None = None) -> list[ApiToken]:
    query = select(ApiToken).join(Project).order_by(ApiToken.id)
    if project_name is not None:
        query = query.where(Project.name == project_name)
    return list(session.scalars(query))


def revoke_token(session: Session, token_id: int) -> bool:
    """Revoke by id; False when there is no such live token."""
    result = session.execute(
        update(ApiToken).where(ApiToken.id == token_id, ApiToken.revoked_at.is_(None)).values(revoked_at=utcnow())
    )
    return bool(result.rowcount)  # type: ignore[attr-defined]
