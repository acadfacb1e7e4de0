import { existsSync, mkdirSync } from 'node:fs';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { chromium, type Browser, type BrowserContext, type Page } from 'playwright-core';
import type { RunningChatServer } from '../../examples/chat/server.js';
import { FRAMEWORKS, call, cleanUp, login, startChat, tempDatabase } from './harness.js';

const CHROMIUM = '/usr/bin/chromium';
const ARTIFACTS = '.vitest-artifacts';
const available = existsSync(CHROMIUM);

if (!available) {
  if (process.env.CI === 'true') throw new Error(`the browser test needs Debian's chromium at ${CHROMIUM}; it is missing on CI`);
  console.warn(`skipping the chat page browser test: ${CHROMIUM} is not installed (apt-get install chromium)`);
}

/** One user's browser window: its own context, so its own sessionStorage and socket. */
interface Window {
  context: BrowserContext;
  page: Page;
  errors: string[];
}

(available ? describe : describe.skip).each(FRAMEWORKS)('chat page in Chromium on %s', (name, start) => {
  let browser: Browser;
  const windows: Window[] = [];

  beforeAll(async () => {
    browser = await chromium.launch({
      executablePath: CHROMIUM,
      args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-background-networking'],
    });
  });

  afterAll(async () => {
    for (const window of windows) await window.context.close();
    await browser?.close();
    await cleanUp();
  });

  async function signIn(server: RunningChatServer, user: string): Promise<Window> {
    const context = await browser.newContext({ viewport: { width: 1000, height: 640 } });
    const page = await context.newPage();
    const window = { context, page, errors: [] as string[] };
    page.on('pageerror', (error) => window.errors.push(error.message));
    windows.push(window);
    await page.goto(server.url);
    await page.click(`#login button[data-user="${user}"]`);
    await page.waitForSelector('#status[data-state="open"]');
    await page.waitForSelector('#conversations li[data-id]');
    return window;
  }

  const open = (window: Window, id: number) => window.page.click(`#conversations li[data-id="${id}"]`);

  async function say(window: Window, text: string): Promise<void> {
    await window.page.fill('#composer input', text);
    await window.page.click('#composer button');
  }

  const sees = (window: Window, text: string) =>
    window.page.waitForSelector(`#messages li.message:not(.pending) .content:text-is("${text}")`, { timeout: 10_000 });

  it('delivers live between two users, to a participant added while her page is open, and across a server restart', { timeout: 90_000 }, async () => {
    const databasePath = tempDatabase();
    let server = await startChat(start, { databasePath });
    const alice = await signIn(server, 'alice');
    const bob = await signIn(server, 'bob');
    const carol = await signIn(server, 'carol');

    // Bob sees alice's message without reloading.
    await open(alice, 1);
    await open(bob, 1);
    await say(alice, 'hello bob');
    await sees(alice, 'hello bob');
    await sees(bob, 'hello bob');

    // Carol is in "team" only; alice adds her to "alice & bob" from the page.
    expect(await carol.page.locator('#conversations li[data-id]').count()).toBe(1);
    await alice.page.fill('#add-participant input', 'carol');
    await alice.page.click('#add-participant button');
    await carol.page.waitForSelector('#conversations li[data-id="1"]');
    await say(bob, 'welcome carol');
    await sees(alice, 'welcome carol');
    // Not open on carol's page yet: it counts as unread, then shows when she opens it.
    await carol.page.waitForSelector('#conversations li[data-id="1"] .badge:text-is("1")');
    await open(carol, 1);
    await sees(carol, 'welcome carol');
    await say(alice, 'can you see this, carol?');
    await sees(carol, 'can you see this, carol?');

    // The server restarts on the same port and database: every page reconnects and catches up.
    const port = Number(new URL(server.url).port);
    await server.close();
    await bob.page.waitForSelector('#status:not([data-state="open"])');
    server = await startChat(start, { databasePath, port });
    // Posted before the pages are back: each catches up from the database when it reconnects.
    await call(server, 'POST', '/api/v1/conversations/1/messages', { token: await login(server, 'carol'), body: { content: 'while you were reconnecting' } });
    for (const window of [alice, bob, carol]) {
      await window.page.waitForSelector('#status[data-state="open"]', { timeout: 15_000 });
      await sees(window, 'while you were reconnecting');
    }
    await say(bob, 'back after the restart');
    for (const window of [alice, bob, carol]) await sees(window, 'back after the restart');

    mkdirSync(ARTIFACTS, { recursive: true });
    await bob.page.screenshot({ path: `${ARTIFACTS}/chat-page-${name}-bob.png` });
    await carol.page.screenshot({ path: `${ARTIFACTS}/chat-page-${name}-carol.png` });
    // Each message shows once on each page, whichever paths carried it.
    expect(await bob.page.locator('#messages li.message').allTextContents()).toHaveLength(5);
    for (const window of [alice, bob, carol]) expect(window.errors).toEqual([]);
  });
});
