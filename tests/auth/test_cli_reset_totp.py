"""`relaypacs users reset-totp`: the way back in for an administrator who lost their TOTP."""

from __future__ import annotations

import subprocess
from pathlib import Path

from relaypacs.auth.models import Role
from relaypacs.main import create_app
from tests.auth.conftest import (
    API,
    actions,
    bearer,
    client_for,
    enrol,
    identity_settings,
    login,
    make_user,
    signed_in,
    user_row,
)
from tests.gateway import gateway_env, relaypacs_command


class TestResetTotpCommand:
    async def test_removes_totp_ends_sessions_and_is_audited(self, tmp_path: Path) -> None:
        data_dir = tmp_path / "data"
        url = f"sqlite+aiosqlite:///{data_dir / 'relaypacs.db'}"
        app = create_app(identity_settings(data_dir, url))
        async with app.router.lifespan_context(app), client_for(app) as client:
            admin = await make_user(app, Role.ADMIN)
            token = (await signed_in(client, admin))["access_token"]
            await enrol(client, token)
            assert (await login(client, admin)).json()["mfa_required"] is True
            done = subprocess.run(
                [*relaypacs_command(), "users", "reset-totp", admin.username],
                env=gateway_env(data_dir),
                capture_output=True,
                text=True,
                timeout=120,
                check=False,
            )
            assert done.returncode == 0, done.stderr
            user = await user_row(app, admin.id)
            assert not user.totp_enabled
            assert user.totp_secret is None
            assert (await client.get(f"{API}/auth/me", headers=bearer(token))).status_code == 401
            again = (await login(client, admin)).json()
            assert again["mfa_required"] is False
            assert again["totp_enrolment_required"] is True
            assert ("admin.user_totp_reset", "success") in await actions(app, object_id=admin.id)
            missing = subprocess.run(
                [*relaypacs_command(), "users", "reset-totp", "nobody-at-all"],
                env=gateway_env(data_dir),
                capture_output=True,
                text=True,
                timeout=120,
                check=False,
            )
            assert missing.returncode != 0
            assert "no user" in missing.stderr
