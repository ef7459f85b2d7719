// The sign-in calls of the API (docs/api.md, Authentication).
import { api, data, type TokenResponse, type UserRead } from "../../lib/api/client";
import { errorOf } from "../../lib/api/errors";

export function login(username: string, password: string): Promise<TokenResponse> {
  return data(api.POST("/api/v1/auth/login", { body: { username, password, refresh_in_body: false } }));
}

export function loginTotp(mfaToken: string, code: string, recovery: boolean): Promise<TokenResponse> {
  const body = recovery
    ? { mfa_token: mfaToken, recovery_code: code, refresh_in_body: false }
    : { mfa_token: mfaToken, code, refresh_in_body: false };
  return data(api.POST("/api/v1/auth/totp", { body }));
}

export function startTotpEnrolment(password: string) {
  return data(api.POST("/api/v1/auth/totp/enrol", { body: { password } }));
}

export function confirmTotp(code: string) {
  return data(api.POST("/api/v1/auth/totp/confirm", { body: { code } }));
}

export function changePassword(currentPassword: string, newPassword: string) {
  return data(
    api.POST("/api/v1/auth/password", { body: { current_password: currentPassword, new_password: newPassword } }),
  );
}

export function me(): Promise<UserRead> {
  return data(api.GET("/api/v1/auth/me"));
}

export async function logout(): Promise<void> {
  await api.POST("/api/v1/auth/logout", {});
}

/** One's own live sessions, newest first (`current`: this one). */
export function mySessions() {
  return data(api.GET("/api/v1/auth/sessions"));
}

export async function endMySession(sessionId: string): Promise<void> {
  const { response } = await api.DELETE("/api/v1/auth/sessions/{session_id}", { params: { path: { session_id: sessionId } } });
  if (!response.ok) throw await errorOf(response);
}
