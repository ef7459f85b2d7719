// Upload: pick or drop a folder or files, check the studies read from them, send; the queue
// below shows each study's progress and survives reloads and lost networks.
import { useRef, useState, type DragEvent } from "react";
import { Alert, Button, Card, SecondaryButton } from "../../components/ui";
import { db, type QueuedStudy } from "../../lib/db";
import { useLive } from "../../lib/use-live";
import { formatDicomDate, formatPersonName, groupByStudy, type Grouping, type PickedFile, type StudyCandidate } from "./group";
import { fromDrop, fromInput } from "./pick";
import { enqueueStudy, forgetStudy, formatBytes, QuotaError } from "./queue";
import { engine, requestBackgroundSync, useProgress } from "./uploader";
import { readHeaderInWorker, readZipInWorker } from "./workers";

export function UploadPage() {
  const [reading, setReading] = useState<{ done: number; total: number } | null>(null);
  const [grouping, setGrouping] = useState<Grouping | null>(null);
  const [error, setError] = useState<string | null>(null);
  const [dragging, setDragging] = useState(false);
  const folderInput = useRef<HTMLInputElement>(null);
  const filesInput = useRef<HTMLInputElement>(null);
  const queue = useLive(() => db.studies.orderBy("createdAt").reverse().toArray(), [], [] as QueuedStudy[]);

  async function read(picked: PickedFile[]) {
    setError(null);
    setGrouping(null);
    if (picked.length === 0) return;
    setReading({ done: 0, total: picked.length });
    performance.mark("relaypacs:read-start");
    let done = 0;
    // A few files at a time (each may be read whole into memory by its worker).
    const read = await inLanes(
      picked,
      4,
      async (p): Promise<Parameters<typeof groupByStudy>[0]> => {
        let results: Parameters<typeof groupByStudy>[0];
        if (/\.zip$/i.test(p.name)) {
          // A ZIP archive: each member is a file of the study (a zipped CD export works).
          const members = await readZipInWorker(p.file);
          results =
            members === null
              ? [{ picked: p, result: { ok: false, reason: "not a readable ZIP archive" } }]
              : members.map((m) => ({
                  picked: { file: new File([m.blob], m.name.split("/").pop() ?? m.name), name: `${p.name}/${m.name}`, sha256: m.sha256 },
                  result: m.result,
                }));
        } else {
          const { result, sha256 } = await readHeaderInWorker(p.file);
          results = [{ picked: { ...p, sha256 }, result }];
        }
        done += 1;
        if (done % 10 === 0 || done === picked.length) setReading({ done, total: picked.length });
        return results;
      },
    );
    setReading(null);
    setGrouping(groupByStudy(read.flat()));
    performance.mark("relaypacs:read-end");
  }

  async function send(candidate: StudyCandidate) {
    setError(null);
    try {
      performance.mark("relaypacs:queue-start");
      await enqueueStudy(db, candidate);
      performance.mark("relaypacs:queue-end");
      // Ask the browser to keep the queue under storage pressure (Safari may still evict an
      // origin's data after 7 days without use: the gateway's record lets any device resume).
      void navigator.storage?.persist?.();
      setGrouping((g) => (g ? { ...g, studies: g.studies.filter((s) => s !== candidate) } : g));
      void requestBackgroundSync();
      engine.kick();
    } catch (e) {
      setError(e instanceof QuotaError ? e.message : "The study could not be queued on this device.");
    }
  }

  function onDrop(event: DragEvent) {
    event.preventDefault();
    setDragging(false);
    void fromDrop(event.dataTransfer).then(read);
  }

  return (
    <div className="flex flex-col gap-6">
      <h1 className="text-2xl font-semibold">Upload a study</h1>
      <div
        onDragOver={(e) => {
          e.preventDefault();
          setDragging(true);
        }}
        onDragLeave={() => setDragging(false)}
        onDrop={onDrop}
        className={`flex flex-col items-center gap-3 rounded-lg border-2 border-dashed p-6 text-center ${dragging ? "border-blue-700 bg-blue-50" : "border-slate-400 bg-white"}`}
      >
        <p>Drop a folder, DICOM files or ZIP archives here (a CD export with its DICOMDIR works), or:</p>
        <div className="flex flex-wrap justify-center gap-2">
          <Button onClick={() => folderInput.current?.click()}>Choose a folder</Button>
          <SecondaryButton onClick={() => filesInput.current?.click()}>Choose files</SecondaryButton>
        </div>
        <input
          ref={folderInput}
          type="file"
          className="sr-only"
          aria-hidden="true"
          tabIndex={-1}
          data-testid="folder-input"
          webkitdirectory=""
          multiple
          onChange={(e) => void read(fromInput(e.target.files))}
        />
        <input ref={filesInput} type="file" className="sr-only" aria-hidden="true" tabIndex={-1} data-testid="files-input" multiple onChange={(e) => void read(fromInput(e.target.files))} />
      </div>
      {reading && (
        <p role="status">
          Reading the files on this device: {reading.done} of {reading.total}…
        </p>
      )}
      {error && <Alert>{error}</Alert>}
      {grouping && <Candidates grouping={grouping} onSend={(c) => void send(c)} />}
      <section aria-labelledby="queue-title" className="flex flex-col gap-3">
        <h2 id="queue-title" className="text-xl font-semibold">
          On this device
        </h2>
        <p className="text-sm text-slate-700">
          Studies wait here, files included, until the gateway has them. Some browsers (Safari) delete a site&apos;s data after 7 days without a visit: what
          the gateway already received is kept there, and choosing the same files again goes on from it.
        </p>
        {queue.length === 0 ? <p className="text-slate-700">Nothing queued.</p> : queue.map((s) => <QueuedStudyRow key={s.id} study={s} />)}
      </section>
    </div>
  );
}

/** `work` on every item, at most `lanes` at a time; results in the items' order. */
async function inLanes<T, R>(items: T[], lanes: number, work: (item: T) => Promise<R>): Promise<R[]> {
  const results: R[] = new Array<R>(items.length);
  let next = 0;
  const lane = async () => {
    while (next < items.length) {
      const index = next++;
      results[index] = await work(items[index]!);
    }
  };
  await Promise.all(Array.from({ length: Math.min(lanes, items.length) }, lane));
  return results;
}

function Candidates({ grouping, onSend }: { grouping: Grouping; onSend: (c: StudyCandidate) => void }) {
  return (
    <section aria-labelledby="found-title" className="flex flex-col gap-3">
      <h2 id="found-title" className="text-xl font-semibold">
        {grouping.studies.length === 1 ? "1 study found" : `${grouping.studies.length} studies found`}: check before sending
      </h2>
      {grouping.studies.map((study) => (
        <Card key={study.studyUid}>
          <dl className="grid grid-cols-1 gap-x-4 gap-y-1 sm:grid-cols-[auto_1fr]">
            <dt className="font-medium">Patient</dt>
            <dd data-testid="patient-name">{formatPersonName(study.patientName) || "(no name)"} {study.patientId && `(${study.patientId})`}</dd>
            <dt className="font-medium">Born</dt>
            <dd>{formatDicomDate(study.birthDate) || "-"}</dd>
            <dt className="font-medium">Study</dt>
            <dd>
              {formatDicomDate(study.studyDate) || "-"} · {study.modalities.join("/") || "-"} · {study.description || "(no description)"}
            </dd>
            <dt className="font-medium">Contents</dt>
            <dd data-testid="study-contents">
              {study.series.length} series, {study.series.reduce((n, s) => n + s.instances, 0)} images, {formatBytes(study.totalBytes)}
            </dd>
          </dl>
          <ul className="my-2 list-inside list-disc text-sm">
            {study.series.map((s) => (
              <li key={s.seriesUid}>
                Series {s.number || "?"} {s.modality} {s.description}: {s.instances} images
              </li>
            ))}
          </ul>
          <Button onClick={() => onSend(study)}>Send this study</Button>
        </Card>
      ))}
      {grouping.skipped.length > 0 && (
        <Card>
          <h3 className="font-medium">Not sent ({grouping.skipped.length} files)</h3>
          <ul className="list-inside list-disc text-sm">
            {grouping.skipped.slice(0, 50).map((s) => (
              <li key={s.name}>
                {s.name}: {s.reason}
              </li>
            ))}
          </ul>
        </Card>
      )}
    </section>
  );
}

const STATE_LABEL: Record<QueuedStudy["state"], string> = {
  queued: "Queued",
  hashing: "Preparing",
  uploading: "Uploading",
  paused: "Paused",
  waiting: "Waiting for the gateway",
  completing: "Finishing",
  sent: "Sent to the gateway",
  already_sent: "Already at the gateway",
  failed: "Failed",
  cancelled: "Cancelled",
};

function duration(seconds: number): string {
  if (seconds < 60) return `${Math.ceil(seconds)} s`;
  const minutes = Math.ceil(seconds / 60);
  return minutes < 60 ? `${minutes} min` : `${Math.floor(minutes / 60)} h ${minutes % 60} min`;
}

function QueuedStudyRow({ study }: { study: QueuedStudy }) {
  const progress = useProgress(study.id);
  const sent = progress?.sentBytes ?? study.sentBytes;
  const active = ["queued", "hashing", "uploading", "completing", "paused", "waiting"].includes(study.state);
  return (
    <Card>
      <div className="flex flex-wrap items-baseline justify-between gap-2">
        <p className="font-medium">
          {formatPersonName(study.patientName) || "(no name)"} · {formatDicomDate(study.studyDate)} · {study.modality} · {study.description}
        </p>
        <p data-testid="queue-state" data-state={study.state}>
          {STATE_LABEL[study.state]}
        </p>
      </div>
      <progress className="mt-2 h-3 w-full" max={study.totalBytes} value={sent} aria-label="Upload progress" />
      <p className="text-sm text-slate-700">
        {formatBytes(sent)} of {formatBytes(study.totalBytes)} · {study.fileCount} files
        {study.state === "uploading" && progress?.speed ? ` · ${formatBytes(progress.speed)}/s` : ""}
        {study.state === "uploading" && progress?.remaining != null ? ` · ${duration(progress.remaining)} left` : ""}
      </p>
      {study.note && <p className="text-sm">{study.note}</p>}
      {study.state === "failed" && (
        <div className="mt-2 flex gap-2">
          <SecondaryButton onClick={() => void engine.resume(study.id)}>Try again</SecondaryButton>
          <SecondaryButton onClick={() => void engine.cancel(study.id)}>Cancel</SecondaryButton>
        </div>
      )}
      {["sent", "already_sent", "cancelled"].includes(study.state) && (
        <div className="mt-2 flex gap-2">
          <SecondaryButton onClick={() => void forgetStudy(db, study.id)}>Remove from this device</SecondaryButton>
        </div>
      )}
      {active && (
        <div className="mt-2 flex gap-2">
          {study.state === "paused" && study.pausedByUser ? (
            <SecondaryButton onClick={() => void engine.resume(study.id)}>Resume</SecondaryButton>
          ) : (
            <SecondaryButton onClick={() => void engine.pause(study.id)}>Pause</SecondaryButton>
          )}
          <SecondaryButton onClick={() => void engine.cancel(study.id)}>Cancel</SecondaryButton>
        </div>
      )}
    </Card>
  );
}
