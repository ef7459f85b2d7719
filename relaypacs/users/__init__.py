"""User administration (administrators only): accounts, roles, TOTP resets, sessions."""
