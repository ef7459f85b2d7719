// Sign in: password, then the authenticator's code where the account has TOTP.
import { useState, type FormEvent } from "react";
import { useNavigate } from "react-router";
import { Alert, Button, Card, Field } from "../../components/ui";
import type { TokenResponse } from "../../lib/api/client";
import { describeError } from "../../lib/api/errors";
import { signedIn } from "../../lib/session";
import { login, loginTotp } from "./api";
import { savePending } from "./use-auth";

export function SignInPage() {
  const navigate = useNavigate();
  const [username, setUsername] = useState("");
  const [password, setPassword] = useState("");
  const [mfaToken, setMfaToken] = useState<string | null>(null);
  const [code, setCode] = useState("");
  const [recovery, setRecovery] = useState(false);
  const [error, setError] = useState<string | null>(null);
  const [busy, setBusy] = useState(false);

  function finish(tokens: TokenResponse) {
    if (!tokens.access_token) return;
    savePending({
      passwordChange: tokens.password_change_required,
      totpEnrolment: tokens.totp_enrolment_required,
    });
    signedIn(tokens.access_token);
    if (tokens.password_change_required) navigate("/password", { replace: true });
    else if (tokens.totp_enrolment_required) navigate("/enrol", { replace: true });
    else navigate("/", { replace: true });
  }

  async function submit(event: FormEvent) {
    event.preventDefault();
    setBusy(true);
    setError(null);
    try {
      if (mfaToken === null) {
        const tokens = await login(username, password);
        setPassword("");
        if (tokens.mfa_required && tokens.mfa_token) setMfaToken(tokens.mfa_token);
        else finish(tokens);
      } else {
        finish(await loginTotp(mfaToken, code.trim(), recovery));
      }
    } catch (e) {
      setError(describeError(e));
    } finally {
      setBusy(false);
    }
  }

  return (
    <main className="mx-auto mt-10 w-full max-w-sm px-4">
      <Card>
        <h1 className="mb-4 text-2xl font-semibold">Sign in to RelayPACS</h1>
        <form onSubmit={submit} className="flex flex-col gap-4">
          {mfaToken === null ? (
            <>
              <Field label="Username" name="username" autoComplete="username" required value={username} onChange={(e) => setUsername(e.target.value)} />
              <Field label="Password" name="password" type="password" autoComplete="current-password" required value={password} onChange={(e) => setPassword(e.target.value)} />
            </>
          ) : (
            <>
              <Field
                label={recovery ? "Recovery code" : "Code from your authenticator app"}
                name="code"
                inputMode={recovery ? "text" : "numeric"}
                autoComplete="one-time-code"
                required
                autoFocus
                value={code}
                onChange={(e) => setCode(e.target.value)}
              />
              <button type="button" className="self-start text-sm text-blue-800 underline" onClick={() => setRecovery(!recovery)}>
                {recovery ? "Use a code from the app" : "Use a recovery code instead"}
              </button>
            </>
          )}
          {error && <Alert>{error}</Alert>}
          <Button type="submit" disabled={busy}>
            {mfaToken === null ? "Sign in" : "Verify"}
          </Button>
        </form>
      </Card>
    </main>
  );
}
