// A temporary password (set by an administrator) is changed before anything else.
import { useState, type FormEvent } from "react";
import { useNavigate } from "react-router";
import { Alert, Button, Card, Field } from "../../components/ui";
import { describeError } from "../../lib/api/errors";
import { signedIn } from "../../lib/session";
import { changePassword } from "./api";
import { loadPending, savePending } from "./use-auth";

export function ChangePasswordPage() {
  const navigate = useNavigate();
  const [current, setCurrent] = useState("");
  const [next, setNext] = useState("");
  const [error, setError] = useState<string | null>(null);

  async function submit(event: FormEvent) {
    event.preventDefault();
    setError(null);
    try {
      const answer = await changePassword(current, next);
      if (answer.access_token) signedIn(answer.access_token);
      const pending = { ...loadPending(), passwordChange: false };
      savePending(pending);
      navigate(pending.totpEnrolment ? "/enrol" : "/", { replace: true });
    } catch (e) {
      setError(describeError(e));
    }
  }

  return (
    <main className="mx-auto mt-10 w-full max-w-sm px-4">
      <Card>
        <h1 className="mb-4 text-2xl font-semibold">Choose a new password</h1>
        <form onSubmit={submit} className="flex flex-col gap-4">
          <Field label="Current password" type="password" autoComplete="current-password" required value={current} onChange={(e) => setCurrent(e.target.value)} />
          <Field label="New password (12 characters or more)" type="password" autoComplete="new-password" minLength={12} required value={next} onChange={(e) => setNext(e.target.value)} />
          {error && <Alert>{error}</Alert>}
          <Button type="submit">Change password</Button>
        </form>
      </Card>
    </main>
  );
}
