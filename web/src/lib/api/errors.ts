// A readable sentence for every error code the API returns (docs/api.md), and the error type
// the app's calls throw. The gateway's own message is the fallback for a code not listed here.

export interface ApiErrorBody {
  error?: { code?: string; message?: string; details?: Record<string, unknown> };
}

export class ApiError extends Error {
  readonly status: number;
  readonly code: string;
  readonly details: Record<string, unknown>;

  constructor(status: number, code: string, message: string, details: Record<string, unknown> = {}) {
    super(message);
    this.name = "ApiError";
    this.status = status;
    this.code = code;
    this.details = details;
  }
}

const MESSAGES: Record<string, string> = {
  invalid_credentials: "Wrong username or password.",
  invalid_totp_code: "That code is not right. Check the time on your phone and try the newest code.",
  rate_limited: "Too many attempts. Wait a moment and try again.",
  session_expired: "Your session has ended. Please sign in again.",
  session_ended: "Your session has ended. Please sign in again.",
  refresh_token_reused: "Your session was ended for safety. Please sign in again.",
  invalid_refresh_token: "Please sign in again.",
  not_authenticated: "Please sign in.",
  forbidden: "Your account may not do this.",
  password_change_required: "Choose a new password first.",
  totp_enrolment_required: "Set up your authenticator app first.",
  wrong_password: "The current password is not right.",
  weak_password: "This password is too weak: use at least 12 characters.",
  totp_already_enabled: "Two-step sign-in is already set up for this account.",
  totp_not_started: "Start the set-up again.",
  invalid_request: "The request was not valid.",
  request_too_large: "The request is too large.",
  upload_not_found: "This upload does not exist, or is not yours.",
  study_already_delivered: "The gateway already has this study: nothing needs to be sent.",
  upload_incomplete: "Some parts are still missing; they will be sent again.",
  upload_rejected: "The gateway refused this study: no file in it could be accepted.",
  upload_not_writable: "This upload is closed and takes no more data.",
  upload_not_cancellable: "This upload can no longer be cancelled.",
  stats_range_invalid: "Choose a range of at most 366 days, its start not after its end.",
  chunk_conflict: "A part of a file changed since it was first sent. Choose the files again.",
  body_stalled: "A part of a file stopped arriving on the way; it is sent again.",
  chunk_size_mismatch: "A part of a file has the wrong size. Choose the files again.",
  content_digest_mismatch: "A part of a file was damaged on the way; it is sent again.",
  content_md5_mismatch: "A part of a file was damaged on the way; it is sent again.",
  chunk_out_of_range: "The files do not match the upload. Choose the files again.",
  chunk_too_large: "A part of a file is too large for the gateway.",
  chunk_batch_too_large: "Too many files were sent in one request for the gateway. Try again.",
  invalid_chunk_batch: "The gateway could not read a group of files sent together. Try again.",
  storage_unavailable: "The gateway's storage is unavailable right now; try again shortly.",
  database_busy: "The gateway is busy; try again shortly.",
  internal_error: "Something went wrong at the gateway. It has been logged.",
  content_digest_invalid: "A part of a file was sent with a malformed checksum; it is sent again.",
  content_md5_required: "A part of a file was sent without its checksum.",
  content_length_required: "A part of a file was sent without its length.",
  totp_reset_required: "Your two-step sign-in must be reset by an administrator.",
  cannot_change_own_account: "You cannot change your own account this way.",
  username_taken: "This username is taken.",
  user_not_found: "This user does not exist.",
  session_not_found: "This session does not exist (it may have ended).",
  upload_not_retryable: "This upload cannot be retried now.",
  conflict: "This conflicts with the current state; reload and try again.",
  service_unavailable: "The gateway cannot do this right now; try again shortly.",
  bad_request: "The request was not valid.",
  not_found: "Not found.",
  method_not_allowed: "This action is not possible here.",
  request_header_fields_too_large: "The request's headers are too large.",
  cors_origin_not_allowed: "This site may not call the gateway.",
  database_unavailable: "The gateway's database is unavailable right now; nothing was lost, try again shortly.",
  storage_full: "The gateway's storage is full; nothing was lost. Tell the administrator, then try again.",
  storage_missing: "The gateway's storage is not set up; tell the administrator.",
  metrics_loopback_only: "Metrics may only be read from the gateway's own machine.",
  metrics_token_required: "Metrics need their own token.",
  not_a_radiologist: "A report can only be assigned to a radiologist.",
  radiologist_not_found: "This radiologist does not exist.",
  notification_not_found: "This notification does not exist.",
  report_not_found: "This report does not exist, or is not yours.",
  report_empty: "Write the findings or the impression before signing.",
  report_not_assigned: "This report is not assigned to you.",
  report_not_signed: "This report has not been signed yet.",
  report_signed: "This report is signed: amend it instead.",
  report_version_not_found: "This version of the report does not exist.",
  network: "No connection to the gateway.",
  // The reasons a file of an upload is refused (the statistics' failure reasons).
  not_dicom: "Not a DICOM file.",
  dicom_preamble_executable: "The DICOM file's preamble holds a program; refused for safety.",
  dicom_truncated: "A damaged DICOM file (cut short).",
  dicom_missing_uid: "A DICOM file without its study, series or instance UID.",
  dicom_inflate_too_large: "A compressed DICOM file that grows too large when opened.",
  dicom_too_deep: "A DICOM file nested too deeply to read safely.",
  dicom_invalid: "A DICOM file that could not be read.",
  dicom_resource_limit: "A DICOM file too costly to read.",
  pacs_refused: "The PACS refused the file for good.",
};

/** The app's sentence for an error code, null when it has none. */
export function messageOf(code: string): string | null {
  return MESSAGES[code] ?? null;
}

/** The sentence to show for an error code (the server's message when the code is unknown). */
export function describeError(error: unknown): string {
  if (error instanceof ApiError) return MESSAGES[error.code] ?? error.message;
  if (error instanceof TypeError) return MESSAGES.network ?? "No connection.";
  return "Something went wrong.";
}

/** The ApiError of a failed response (its JSON error body, or the status alone). */
export async function errorOf(response: Response): Promise<ApiError> {
  let body: ApiErrorBody = {};
  try {
    body = (await response.json()) as ApiErrorBody;
  } catch {
    // not JSON: the status says enough
  }
  const code = body.error?.code ?? `http_${response.status}`;
  return new ApiError(response.status, code, body.error?.message ?? response.statusText, body.error?.details ?? {});
}
