// First sign-in of an account that must have TOTP: scan the QR code, confirm a first code,
// keep the recovery codes.
import { useState, type FormEvent } from "react";
import { useNavigate } from "react-router";
import { Alert, Button, Card, Field } from "../../components/ui";
import { describeError } from "../../lib/api/errors";
import { confirmTotp, startTotpEnrolment } from "./api";
import { loadPending, savePending } from "./use-auth";

export function EnrolTotpPage() {
  const navigate = useNavigate();
  const [password, setPassword] = useState("");
  const [enrolment, setEnrolment] = useState<{ secret: string; qr_code: string } | null>(null);
  const [code, setCode] = useState("");
  const [recoveryCodes, setRecoveryCodes] = useState<string[] | null>(null);
  const [error, setError] = useState<string | null>(null);
  const [busy, setBusy] = useState(false);

  async function submit(event: FormEvent) {
    event.preventDefault();
    setBusy(true);
    setError(null);
    try {
      if (enrolment === null) {
        setEnrolment(await startTotpEnrolment(password));
        setPassword("");
      } else {
        const answer = await confirmTotp(code.trim());
        setRecoveryCodes(answer.recovery_codes);
        savePending({ ...loadPending(), totpEnrolment: false });
      }
    } catch (e) {
      setError(describeError(e));
    } finally {
      setBusy(false);
    }
  }

  if (recoveryCodes !== null) {
    return (
      <main className="mx-auto mt-10 w-full max-w-md px-4">
        <Card>
          <h1 className="mb-2 text-2xl font-semibold">Two-step sign-in is on</h1>
          <p className="mb-3">Keep these recovery codes somewhere safe. Each works once, if you lose your phone.</p>
          <ul aria-label="Recovery codes" className="mb-4 grid grid-cols-2 gap-1 font-mono">
            {recoveryCodes.map((c) => (
              <li key={c}>{c}</li>
            ))}
          </ul>
          <Button onClick={() => navigate("/", { replace: true })}>Continue</Button>
        </Card>
      </main>
    );
  }

  return (
    <main className="mx-auto mt-10 w-full max-w-md px-4">
      <Card>
        <h1 className="mb-2 text-2xl font-semibold">Set up two-step sign-in</h1>
        <form onSubmit={submit} className="flex flex-col gap-4">
          {enrolment === null ? (
            <>
              <p>Your account needs a code from an authenticator app at each sign-in. Confirm your password to start.</p>
              <Field label="Password" type="password" autoComplete="current-password" required value={password} onChange={(e) => setPassword(e.target.value)} />
            </>
          ) : (
            <>
              <p>Scan this code with your authenticator app, then type the code it shows.</p>
              <img src={enrolment.qr_code} alt="QR code for your authenticator app" className="mx-auto h-48 w-48" />
              <p className="text-sm">
                Or enter this key by hand: <code className="break-all font-mono">{enrolment.secret}</code>
              </p>
              <Field label="Code from the app" name="code" inputMode="numeric" autoComplete="one-time-code" required value={code} onChange={(e) => setCode(e.target.value)} />
            </>
          )}
          {error && <Alert>{error}</Alert>}
          <Button type="submit" disabled={busy}>
            {enrolment === null ? "Continue" : "Turn on"}
          </Button>
        </form>
      </Card>
    </main>
  );
}
