// The notification bell: the unread count, the latest notifications, "mark all read", and the
// offer of browser notifications (asked only when the clinician chooses it).
import { useMutation, useQuery, useQueryClient } from "@tanstack/react-query";
import { useState } from "react";
import { SecondaryButton } from "../../components/ui";
import { markAllRead, notificationsQuery } from "./api";
import { useLiveConnected } from "../../lib/live-status";

const TEXT: Record<string, string> = {
  upload_received: "A study was received; it is being checked.",
  upload_validated: "A study was checked and accepted.",
  upload_rejected: "A study was refused: none of its files could be accepted.",
  upload_expired: "An unfinished upload expired; send the study again.",
  upload_delivered: "A study was delivered to the PACS.",
  upload_failed: "A study could not be delivered to the PACS.",
  report_assigned: "A report was assigned to you.",
  report_ready: "A report is ready.",
  report_amended: "A report was amended.",
};

export function NotificationBell() {
  const live = useLiveConnected();
  const notifications = useQuery({ ...notificationsQuery(), refetchInterval: live ? 60_000 : 15_000 });
  const queryClient = useQueryClient();
  const readAll = useMutation({
    mutationFn: markAllRead,
    onSuccess: () => queryClient.invalidateQueries({ queryKey: ["notifications"] }),
  });
  const [open, setOpen] = useState(false);
  const [permission, setPermission] = useState(typeof Notification === "undefined" ? "denied" : Notification.permission);
  const unread = notifications.data?.unread ?? 0;

  return (
    <div className="relative">
      <SecondaryButton aria-expanded={open} aria-haspopup="true" onClick={() => setOpen(!open)} data-testid="bell">
        <svg aria-hidden="true" viewBox="0 0 24 24" className="mr-1 inline h-5 w-5 align-text-bottom" fill="none" stroke="currentColor" strokeWidth="2">
          <path d="M18 8a6 6 0 1 0-12 0c0 7-3 9-3 9h18s-3-2-3-9M13.7 21a2 2 0 0 1-3.4 0" strokeLinecap="round" strokeLinejoin="round" />
        </svg>
        <span className="sr-only">Notifications, </span>
        <span data-testid="unread">{unread}</span>
        <span className="sr-only"> unread</span>
      </SecondaryButton>
      {open && (
        <div className="absolute right-0 z-10 mt-2 w-80 max-w-[90vw] rounded-lg border border-slate-200 bg-white p-3 shadow-lg">
          <ul aria-label="Notifications" className="flex max-h-80 flex-col gap-2 overflow-y-auto">
            {(notifications.data?.items ?? []).map((n) => (
              <li key={n.id} className={n.is_read ? "text-slate-700" : "font-medium"}>
                {TEXT[n.kind] ?? n.kind} <time className="block text-xs text-slate-700">{new Date(n.created_at).toLocaleString()}</time>
              </li>
            ))}
            {notifications.data?.items.length === 0 && <li>Nothing yet.</li>}
          </ul>
          <div className="mt-3 flex flex-wrap gap-2">
            {unread > 0 && <SecondaryButton onClick={() => readAll.mutate()}>Mark all read</SecondaryButton>}
            {permission === "default" && (
              <SecondaryButton onClick={() => void Notification.requestPermission().then(setPermission)}>
                Notify me on this device
              </SecondaryButton>
            )}
          </div>
        </div>
      )}
    </div>
  );
}
