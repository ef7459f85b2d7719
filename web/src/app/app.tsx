// The app: providers, routes, the signed-in frame.
import { QueryClient, QueryClientProvider } from "@tanstack/react-query";
import { lazy, Suspense, useEffect, useState, type ReactNode } from "react";
import { createBrowserRouter, Navigate, NavLink, Outlet, RouterProvider, useLocation, useNavigate } from "react-router";
import { useRegisterSW } from "virtual:pwa-register/react";
import { Alert, Button, SecondaryButton } from "../components/ui";
import { AssignmentPage } from "../features/admin/assignment-page";
import { AuditPage } from "../features/admin/audit-page";
import { TargetsPage } from "../features/admin/targets-page";
import { AdminUploadsPage } from "../features/admin/uploads-page";
import { UsersPage } from "../features/admin/users-page";
import { ChangePasswordPage } from "../features/auth/change-password-page";
import { EnrolTotpPage } from "../features/auth/enrol-totp-page";
import { logout } from "../features/auth/api";
import { SessionsPage } from "../features/auth/sessions-page";
import { SignInPage } from "../features/auth/sign-in-page";
import { loadPending, useAccessToken } from "../features/auth/use-auth";
import { useRole } from "../features/auth/use-role";
import { activeStudies, clearQueue } from "../features/upload/queue";
import { UploadPage } from "../features/upload/upload-page";
import { engine, startUploader } from "../features/upload/uploader";
import { MyUploadsPage } from "../features/uploads/my-uploads-page";
import { NotificationBell } from "../features/notifications/bell";
import { useNotificationStream } from "../features/notifications/live";
import { ReportPage } from "../features/worklist/report-page";
import { WorklistPage } from "../features/worklist/worklist-page";
import { db } from "../lib/db";
import { homeOf, mayOpen, pagesFor, type Role } from "../lib/roles";
import { refreshAccess, signedOut } from "../lib/session";

// The statistics' page and its chart library (uPlot), loaded when an administrator opens it.
const StatsPage = lazy(() => import("../features/admin/stats-page").then((module) => ({ default: module.StatsPage })));

const queryClient = new QueryClient({
  defaultOptions: { queries: { retry: 1, refetchOnWindowFocus: true } },
});

/** At page load the access token is gone: the refresh cookie gets a new one, if the session
 * lives. Offline, the app still opens (the queue is on this device) and tries again later. */
function useRestoredSession(): "checking" | "offline" | "done" {
  const token = useAccessToken();
  const [state, setState] = useState<"checking" | "offline" | "done">(token ? "done" : "checking");
  useEffect(() => {
    if (token) return;
    let live = true;
    const attempt = () =>
      refreshAccess(null).then(
        () => live && setState("done"),
        () => live && setState("offline"),
      );
    void attempt();
    const online = () => void attempt();
    window.addEventListener("online", online);
    return () => {
      live = false;
      window.removeEventListener("online", online);
    };
  }, [token]);
  return token ? "done" : state;
}

function RequireSession({ children }: { children: ReactNode }) {
  const token = useAccessToken();
  const state = useRestoredSession();
  if (state === "checking") return <p className="p-6" role="status">Loading…</p>;
  if (token === null && state === "done") return <Navigate to="/sign-in" replace />;
  const pending = loadPending();
  if (token !== null && pending.passwordChange) return <Navigate to="/password" replace />;
  if (token !== null && pending.totpEnrolment) return <Navigate to="/enrol" replace />;
  return <>{children}</>;
}

/** The page, when the role may open it; "not allowed" otherwise, before any call of the page
 * reaches the API. While the role is not known yet: the upload page (it asks the API nothing
 * when it opens, and is there at once after signing in), and offline the uploader's pages (the
 * queue on this device) and a report's editor (the draft kept on this device, if any);
 * anything else waits for the role. */
function RolePage({ role, offline, children }: { role: Role | null; offline: boolean; children: ReactNode }) {
  const { pathname } = useLocation();
  if (role === null) {
    const now = pathname === "/" || (offline && (mayOpen("clinician", pathname) || pathname.startsWith("/worklist/")));
    return now ? <>{children}</> : <p role="status">Loading…</p>;
  }
  if (pathname === "/" && !mayOpen(role, "/")) return <Navigate to={homeOf(role)} replace />;
  if (!mayOpen(role, pathname)) {
    return (
      <div className="flex flex-col gap-3">
        <h1 className="text-2xl font-semibold">Not allowed</h1>
        <Alert>Your account may not open this page.</Alert>
      </div>
    );
  }
  return <>{children}</>;
}

function UpdatePrompt() {
  const {
    needRefresh: [needRefresh],
    updateServiceWorker,
  } = useRegisterSW();
  if (!needRefresh) return null;
  return (
    <div role="alert" className="flex flex-wrap items-center gap-3 bg-amber-100 px-4 py-2">
      A new version of RelayPACS is available.
      <Button
        onClick={() => {
          // The new worker takes over, then the page loads again under it (workbox-window
          // reloads only when the page was controlled at its registration: not on a first visit).
          navigator.serviceWorker?.addEventListener("controllerchange", () => window.location.reload(), { once: true });
          void updateServiceWorker(false);
        }}
      >
        Reload
      </Button>
    </div>
  );
}

function Frame() {
  const navigate = useNavigate();
  const token = useAccessToken();
  const role = useRole(token);
  useEffect(() => startUploader(), []);
  useNotificationStream(queryClient, token);

  async function signOut() {
    const unfinished = await activeStudies(db);
    if (
      unfinished.length > 0 &&
      !window.confirm(`${unfinished.length} upload(s) are not finished. Signing out deletes them from this device. Sign out anyway?`)
    ) {
      return;
    }
    engine.stopAll(); // nothing more leaves for this account
    await clearQueue(db);
    await logout().catch(() => undefined);
    sessionStorage.clear();
    queryClient.clear();
    signedOut();
    navigate("/sign-in", { replace: true });
  }

  const link = ({ isActive }: { isActive: boolean }) => `rounded px-2 py-1 ${isActive ? "bg-blue-100 font-semibold text-blue-900" : "text-slate-900"}`;
  return (
    <>
      <header className="border-b border-slate-200 bg-white">
        <nav aria-label="Main" className="mx-auto flex max-w-4xl flex-wrap items-center gap-2 px-4 py-2">
          <span className="mr-4 font-bold text-blue-900">RelayPACS</span>
          {pagesFor(role ?? "clinician").map((page) => (
            <NavLink key={page.to} to={page.to} end={page.to === "/"} className={link}>
              {page.label}
            </NavLink>
          ))}
          <span className="grow" />
          {token === null && <span role="status">Offline</span>}
          {token !== null && <NotificationBell />}
          <SecondaryButton onClick={() => void signOut()}>Sign out</SecondaryButton>
        </nav>
      </header>
      <main className="mx-auto w-full max-w-4xl px-4 py-6">
        <RolePage role={role} offline={token === null}>
          <Outlet />
        </RolePage>
      </main>
    </>
  );
}

const router = createBrowserRouter([
  { path: "/sign-in", element: <SignInPage /> },
  { path: "/password", element: <ChangePasswordPage /> },
  { path: "/enrol", element: <EnrolTotpPage /> },
  {
    element: (
      <RequireSession>
        <Frame />
      </RequireSession>
    ),
    children: [
      { index: true, element: <UploadPage /> },
      { path: "uploads", element: <MyUploadsPage /> },
      { path: "worklist", element: <WorklistPage /> },
      { path: "worklist/:reportId", element: <ReportPage /> },
      { path: "admin/assignment", element: <AssignmentPage /> },
      { path: "admin/uploads", element: <AdminUploadsPage /> },
      { path: "admin/users", element: <UsersPage /> },
      { path: "admin/audit", element: <AuditPage /> },
      { path: "admin/targets", element: <TargetsPage /> },
      {
        path: "admin/stats",
        element: (
          <Suspense fallback={<p role="status">Loading…</p>}>
            <StatsPage />
          </Suspense>
        ),
      },
      { path: "sessions", element: <SessionsPage /> },
    ],
  },
  { path: "*", element: <Navigate to="/" replace /> },
]);

export function App() {
  return (
    <QueryClientProvider client={queryClient}>
      <UpdatePrompt />
      <RouterProvider router={router} />
    </QueryClientProvider>
  );
}
