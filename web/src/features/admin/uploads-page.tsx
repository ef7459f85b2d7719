// The administrator's uploads needing attention: refused by the PACS, retrying or not moving,
// each with the PACS's last answer; retry (after the PACS is back) or cancel.
import { useQuery, useQueryClient } from "@tanstack/react-query";
import { useState } from "react";
import { Alert, Card, SecondaryButton } from "../../components/ui";
import type { UploadSummary } from "../../lib/api/client";
import { describeError } from "../../lib/api/errors";
import { useLiveConnected } from "../../lib/live-status";
import { formatDicomDate } from "../../lib/format";
import { cancelUpload, problemUploadsOptions, retryUpload, uploadDetailOptions } from "./api";

const STATUS: Record<string, string> = {
  queued: "Waiting for the PACS",
  forwarding: "Sending to the PACS",
  failed: "PACS delivery failed",
};

export function AdminUploadsPage() {
  const live = useLiveConnected();
  const uploads = useQuery(problemUploadsOptions(live));
  return (
    <div className="flex flex-col gap-4">
      <h1 className="text-2xl font-semibold">Uploads needing attention</h1>
      {uploads.error && <Alert>{describeError(uploads.error)}</Alert>}
      {uploads.data?.items.length === 0 && <p>Nothing needs attention.</p>}
      <ul aria-label="Uploads needing attention" className="flex flex-col gap-2">
        {uploads.data?.items.map((upload) => (
          <li key={upload.id}>
            <ProblemRow upload={upload} />
          </li>
        ))}
      </ul>
    </div>
  );
}

function ProblemRow({ upload }: { upload: UploadSummary }) {
  const queryClient = useQueryClient();
  const detail = useQuery(uploadDetailOptions(upload.id, upload.status));
  const [error, setError] = useState<string | null>(null);
  const [busy, setBusy] = useState(false);
  const reason = detail.data?.forwarding?.last_error;

  async function act(action: (id: string) => Promise<unknown>) {
    setBusy(true);
    setError(null);
    try {
      await action(upload.id);
      await queryClient.invalidateQueries({ queryKey: ["uploads"] });
      await queryClient.invalidateQueries({ queryKey: ["upload", upload.id] });
    } catch (e) {
      setError(describeError(e));
    } finally {
      setBusy(false);
    }
  }

  return (
    <Card>
      <p className="font-medium" data-testid="attention-status" data-status={upload.status}>
        {STATUS[upload.status] ?? upload.status}
      </p>
      <p className="text-sm text-slate-700">
        {[upload.metadata.modality, formatDicomDate(upload.metadata.study_date)].filter(Boolean).join(" · ")} · {upload.file_count} files · sent{" "}
        {new Date(upload.created_at).toLocaleString()}
      </p>
      {reason && <p className="text-sm">Last PACS answer: {reason}</p>}
      <div className="mt-2 flex flex-wrap gap-2">
        <SecondaryButton onClick={() => void act(retryUpload)} disabled={busy}>
          Retry
        </SecondaryButton>
        <SecondaryButton
          onClick={() => {
            if (window.confirm("Cancel this upload? It will never reach the PACS and its stored files are deleted.")) void act(cancelUpload);
          }}
          disabled={busy}
        >
          Cancel upload
        </SecondaryButton>
      </div>
      {error && <Alert>{error}</Alert>}
    </Card>
  );
}
