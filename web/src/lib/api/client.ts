// The typed API client: paths and shapes come from schema.d.ts, generated from the gateway's
// OpenAPI document (scripts/web.sh api-types), never written by hand.
import createClient from "openapi-fetch";
import { authFetch } from "../session";
import { ApiError, errorOf } from "./errors";
import type { components, paths } from "./schema";

export type Schemas = components["schemas"];
export type UploadRead = Schemas["UploadRead"];
export type UploadSummary = Schemas["UploadSummary"];
export type TokenResponse = Schemas["TokenResponse"];
export type UserRead = Schemas["UserRead"];

export const api = createClient<paths>({
  baseUrl: typeof location === "undefined" ? "http://localhost" : location.origin,
  fetch: authFetch,
  credentials: "same-origin",
});

/** The data of an openapi-fetch answer, or its error as an ApiError. */
export async function data<T>(call: Promise<{ data?: T; error?: unknown; response: Response }>): Promise<T> {
  const { data: body, response } = await call;
  if (!response.ok || body === undefined) {
    throw response.bodyUsed ? fromBody(response, (await call).error) : await errorOf(response);
  }
  return body;
}

function fromBody(response: Response, error: unknown): ApiError {
  const e = (error ?? {}) as { error?: { code?: string; message?: string; details?: Record<string, unknown> } };
  return new ApiError(
    response.status,
    e.error?.code ?? `http_${response.status}`,
    e.error?.message ?? response.statusText,
    e.error?.details ?? {},
  );
}
