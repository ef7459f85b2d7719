// Build of the web app: served by the gateway from web/dist (relaypacs/webapp.py).
import tailwindcss from "@tailwindcss/vite";
import react from "@vitejs/plugin-react";
import { defineConfig } from "vite";
import { VitePWA } from "vite-plugin-pwa";

export default defineConfig({
  plugins: [
    react(),
    tailwindcss(),
    VitePWA({
      strategies: "injectManifest",
      srcDir: "src/sw",
      filename: "sw.ts",
      registerType: "prompt",
      injectRegister: false, // registered by the app (useRegisterSW): no inline script
      injectManifest: { globPatterns: ["**/*.{js,css,html,svg,png,webmanifest,wasm}"] },
      manifest: {
        name: "RelayPACS",
        short_name: "RelayPACS",
        description: "Upload DICOM studies to the hospital's PACS, on any network.",
        start_url: "/",
        scope: "/",
        display: "standalone",
        background_color: "#f8fafc",
        theme_color: "#0f4c81",
        icons: [
          { src: "/icon-192.png", sizes: "192x192", type: "image/png" },
          { src: "/icon-512.png", sizes: "512x512", type: "image/png" },
          { src: "/icon-512.png", sizes: "512x512", type: "image/png", purpose: "maskable" },
        ],
      },
    }),
  ],
  build: { target: "es2022", sourcemap: false, chunkSizeWarningLimit: 800 },
  worker: { format: "es" },
  server: { proxy: { "/api": "http://127.0.0.1:8080" } },
});
