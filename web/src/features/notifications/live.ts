// The live stream of notifications (Server-Sent Events): each one refreshes what it is about
// (the uploads, the bell), and a report ready or amended (to the clinician) or a study assigned
// (to the radiologist) shows a browser notification when the user allowed them. EventSource cannot send the Authorization header: the stream opens
// with a one-time ticket (never the access token in a URL); a lost stream opens again with a
// new ticket and everything is read again, so nothing told meanwhile is missed.
import type { QueryClient } from "@tanstack/react-query";
import { useEffect } from "react";
import { setLiveConnected as setConnected } from "../../lib/live-status";
import { streamTicket } from "./api";

interface NotificationEvent {
  kind: string;
}

const BROWSER_NOTICES: Record<string, string> = {
  report_assigned: "A study was assigned to you in RelayPACS.",
  report_ready: "A report is ready in RelayPACS.",
  report_amended: "A report was amended in RelayPACS.",
  upload_failed: "A study could not be delivered to the PACS.",
  upload_rejected: "A study was refused by RelayPACS.",
  upload_expired: "An unfinished upload expired in RelayPACS.",
};

/** Keep the stream open while signed in (`token` changes restart it). */
export function useNotificationStream(queryClient: QueryClient, token: string | null): void {
  useEffect(() => {
    if (token === null || typeof EventSource === "undefined") return;
    let source: EventSource | null = null;
    let retry: ReturnType<typeof setTimeout> | null = null;
    let stopped = false;

    const open = async () => {
      try {
        const { ticket } = await streamTicket();
        if (stopped) return;
        source = new EventSource(`/api/v1/notifications/stream?ticket=${encodeURIComponent(ticket)}`);
        source.onopen = () => {
          setConnected(true);
          void queryClient.invalidateQueries(); // what was told while the stream was closed
        };
        source.addEventListener("notification", (event: MessageEvent<string>) => {
          void queryClient.invalidateQueries({ queryKey: ["notifications"] });
          void queryClient.invalidateQueries({ queryKey: ["uploads"] });
          void queryClient.invalidateQueries({ queryKey: ["upload"] });
          void queryClient.invalidateQueries({ queryKey: ["reports"] });
          void queryClient.invalidateQueries({ queryKey: ["report"] });
          let kind = "";
          try {
            kind = (JSON.parse(event.data) as NotificationEvent).kind;
          } catch {
            // not JSON: only the refresh above
          }
          const text = BROWSER_NOTICES[kind];
          if (text && typeof Notification !== "undefined" && Notification.permission === "granted") {
            new Notification(text); // no patient data in it
          }
        });
        source.onerror = () => {
          // The ticket is single-use: the browser's own reconnection cannot work. Open anew.
          source?.close();
          setConnected(false);
          if (!stopped) retry = setTimeout(() => void open(), 3000);
        };
      } catch {
        setConnected(false);
        if (!stopped) retry = setTimeout(() => void open(), 10_000);
      }
    };
    void open();
    return () => {
      stopped = true;
      if (retry) clearTimeout(retry);
      source?.close();
      setConnected(false);
    };
  }, [queryClient, token]);
}
