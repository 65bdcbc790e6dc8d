// Headless Chromium from the distribution (no browser can be downloaded here), driven by playwright-core.
import { chromium, type Browser, type BrowserContext, type Page } from 'playwright-core';
import { CHROMIUM } from './paths';

export function launchBrowser(): Promise<Browser> {
  return chromium.launch({
    executablePath: CHROMIUM,
    // Quiet on a closed network: no update checks, sync or first-run work competing with the test.
    args: [
      '--headless',
      '--no-sandbox',
      '--disable-gpu',
      '--disable-background-networking',
      '--disable-component-update',
      '--disable-sync',
      '--no-first-run',
    ],
  });
}

export interface Tab {
  page: Page;
  context: BrowserContext;
}

/** A page of the e2e harness for `user`, ONLINE before it is returned. */
export async function openTab(
  context: BrowserContext,
  origin: string,
  user: string,
  query: Record<string, string> = {},
): Promise<Page> {
  const page = await context.newPage();
  const errors: string[] = [];
  page.on('pageerror', (e) => errors.push(String(e)));
  const params = new URLSearchParams({ user, ...query });
  await page.goto(`${origin}/e2e/index.html?${params}`);
  await page
    .waitForFunction(() => (window as any).t && (window as any).t.client.isConnected(), null, { timeout: 10_000 })
    .catch((e) => {
      throw new Error(`${user}'s page did not connect: ${e.message}; page errors: ${errors.join('; ')}`);
    });
  return page;
}

/** Waits until `predicate` (run in the page) is true. */
export function until(page: Page, predicate: string, timeout = 10_000) {
  return page.waitForFunction(predicate, null, { timeout, polling: 50 });
}

export const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/**
 * Hides or shows a page. Headless Chromium reports every page as visible: on this machine,
 * minimizing the window (CDP Browser.setWindowBounds), switching tabs inside one window
 * (Target.activateTarget), focus emulation and dropping Playwright's occlusion flags all left
 * visibilityState "visible". So this does what the browser does when a tab is hidden or
 * shown: the property changes and `visibilitychange` fires. Everything after that is real:
 * the client's listener, its `activity` frame, the server's presence, the watcher's event.
 */
export function setHidden(page: Page, hidden: boolean): Promise<void> {
  return page.evaluate((hide) => {
    Object.defineProperty(document, 'visibilityState', { configurable: true, get: () => (hide ? 'hidden' : 'visible') });
    Object.defineProperty(document, 'hidden', { configurable: true, get: () => hide });
    document.dispatchEvent(new Event('visibilitychange'));
  }, hidden);
}
