/**
 * Headless Chromium for the page tests (Debian's chromium through
 * playwright-core; `npx playwright install` cannot work here). A fresh
 * profile folder per launch, removed on close.
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { chromium, type BrowserContext, type Page } from 'playwright-core';

/** The flags FIELD-NOTES.md lists for this machine. */
export const CHROMIUM_FLAGS = ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking', '--disable-component-update', '--disable-sync'];

export interface BrowserHandle {
  context: BrowserContext;
  page: Page;
  /** Console errors and uncaught exceptions of the page. */
  errors: string[];
  close(): Promise<void>;
}

/** Launch Chromium at a laptop's screen size (1366×768). */
export async function launchBrowser(): Promise<BrowserHandle> {
  const profile = mkdtempSync(path.join(tmpdir(), 'tandem-chromium-'));
  const context = await chromium.launchPersistentContext(profile, {
    executablePath: process.env.TANDEM_CHROMIUM ?? '/usr/bin/chromium',
    headless: true,
    args: CHROMIUM_FLAGS,
    viewport: { width: 1366, height: 768 },
    timeout: 60_000,
  });
  const page = context.pages()[0] ?? (await context.newPage());
  const errors: string[] = [];
  page.on('pageerror', (e) => errors.push(`pageerror: ${e.message}`));
  page.on('console', (m) => {
    if (m.type() === 'error') errors.push(`console: ${m.text()}`);
  });
  // The page must work offline: any request to another origin fails the test.
  await context.route((url) => !['127.0.0.1', 'localhost'].includes(url.hostname), (route) => {
    errors.push(`request to another origin: ${route.request().url()}`);
    return route.abort();
  });
  return {
    context,
    page,
    errors,
    close: async () => {
      await context.close().catch(() => {});
      rmSync(profile, { recursive: true, force: true });
    },
  };
}
