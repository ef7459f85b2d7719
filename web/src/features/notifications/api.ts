// The clinician's notifications (docs/api.md, Notifications).
import { queryOptions } from "@tanstack/react-query";
import { api, data } from "../../lib/api/client";

export function notificationsQuery() {
  return queryOptions({
    queryKey: ["notifications"],
    queryFn: () => data(api.GET("/api/v1/notifications", { params: { query: { limit: 20 } } })),
  });
}

export function markAllRead() {
  return data(api.POST("/api/v1/notifications/read-all", {}));
}

export function streamTicket() {
  return data(api.POST("/api/v1/notifications/stream-ticket", {}));
}
