// One's own sessions: every device signed in to this account, and an end to any but this one
// (a lost phone, a shared computer). Signing out ends this one.
import { useQuery, useQueryClient } from "@tanstack/react-query";
import { useState } from "react";
import { Alert } from "../../components/ui";
import { SessionList } from "../../components/session-list";
import { describeError } from "../../lib/api/errors";
import { endMySession, mySessions } from "./api";

const KEY = ["auth", "sessions"] as const;

export function SessionsPage() {
  const queryClient = useQueryClient();
  const sessions = useQuery({ queryKey: KEY, queryFn: mySessions });
  const [error, setError] = useState<string | null>(null);
  const [done, setDone] = useState<string | null>(null);
  const [busy, setBusy] = useState(false);

  async function end(sessionId: string) {
    setBusy(true);
    setError(null);
    setDone(null);
    try {
      await endMySession(sessionId);
      setDone("Session ended: that device must sign in again.");
      await queryClient.invalidateQueries({ queryKey: KEY });
    } catch (e) {
      setError(describeError(e));
    } finally {
      setBusy(false);
    }
  }

  return (
    <div className="flex flex-col gap-4">
      <h1 className="text-2xl font-semibold">Your sessions</h1>
      <p>Every device where your account is signed in. End any you do not recognise, then change your password.</p>
      {sessions.error && <Alert>{describeError(sessions.error)}</Alert>}
      {sessions.data && <SessionList sessions={sessions.data} label="Your sessions" busy={busy} onEnd={(s) => void end(s.id)} />}
      {done && <p role="status">{done}</p>}
      {error && <Alert>{error}</Alert>}
    </div>
  );
}
