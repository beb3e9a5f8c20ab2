// Drives the flowd web console in Debian's chromium (headless), as a user
// would. Run by crates/flowd/tests/pipelines.rs against a real host, in two
// phases (the test changes the pipeline between them):
//   PHASE=watch   log in; the pipeline's graph with rates moving; a flow's
//                 live tail; a processor's placement and rate history; a
//                 component's users; subscriptions both ways; a step's
//                 log with a trap's message; pause and resume a processor;
//   PHASE=replay  replay a dead letter from its page;
//   PHASE=remote  a pipeline's remote input drawn with the flow it comes
//                 from (REMOTE).
// Environment: CONSOLE_URL, TOKEN, PIPELINE, STEP (the failing step),
// RUNNER (a processor to pause), COMPONENT (the runner's component, as
// name@version), HOST (the host's id), INPUT and OUTPUT (the pipeline's flows),
// COPY (a local flow subscribed to OUTPUT), EVENT (a dead letter's event
// id), SHOTS (screenshot directory). Exits non-zero, with the reason, on any
// failure.
import { chromium } from "playwright-core";
import { mkdirSync } from "node:fs";
import { join } from "node:path";

const env = (name) => {
  const value = process.env[name];
  if (!value) throw new Error(`${name} is not set`);
  return value;
};
const url = env("CONSOLE_URL");
const phase = env("PHASE");
const shots = env("SHOTS");
mkdirSync(shots, { recursive: true });

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  headless: true,
  // Playwright gives chromium a fresh, empty profile of its own.
  args: [
    "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
  ],
});
const page = await browser.newPage({ viewport: { width: 1400, height: 900 } });
const errors = [];
page.on("pageerror", (e) => errors.push(e.message));
const shot = (name) => page.screenshot({ path: join(shots, `${phase}-${name}.png`), fullPage: true });

async function step(name, body) {
  try {
    await body();
    await shot(name);
    console.log(`ok ${phase} ${name}`);
  } catch (e) {
    await shot(`${name}-failed`).catch(() => {});
    throw new Error(`${phase} ${name}: ${e.message}`);
  }
}

try {
  await step("login", async () => {
    await page.goto(url);
    await page.getByLabel("Administrator token").fill(env("TOKEN"));
    await page.getByRole("button", { name: "Log in" }).click();
    await page.locator("#who").filter({ hasText: "administrator" }).waitFor({ timeout: 10000 });
  });

  if (phase === "watch") {
    const pipeline = env("PIPELINE"), failing = env("STEP"), runner = env("RUNNER");
    await step("graph", async () => {
      await page.goto(url + "/#pipelines");
      await page.getByTestId("graph-" + pipeline).waitFor({ timeout: 10000 });
      // Rates moving: the first step's rate leaves 0.0/s while events flow.
      // (The page is redrawn every second: the node is looked up each time.)
      await page.waitForFunction(() => {
        const e = document.querySelector('[data-testid="rate-mark"]');
        return e && !e.textContent.startsWith("0.0/s");
      }, null, { timeout: 20000 });
      await page.getByTestId("counts-" + failing).filter({ hasNotText: "dead 0" }).waitFor({ timeout: 20000 });
      // The edge into the first step carries its rate and lag.
      await page.waitForFunction((input) => {
        const e = document.querySelector(`[data-testid="edge-${input}-mark"]`);
        return e && /^[0-9.]+\/s lag [0-9]+$/.test(e.textContent) && !e.textContent.startsWith("0.0/s");
      }, env("INPUT"), { timeout: 20000 });
      // The keyed step's partitions, all four held by this host's instance.
      await page.getByTestId("partitions-" + failing).locator("td").filter({ hasText: /^0-3$/ }).waitFor({ timeout: 20000 });
    });
    await step("tail", async () => {
      await page.goto(url + "/#flows");
      // The output's row: events stored per second, and its one subscriber.
      const output = page.getByTestId("flow-" + env("OUTPUT"));
      await output.getByTestId("subscribers").filter({ hasText: /^1$/ }).waitFor({ timeout: 10000 });
      await page.waitForFunction((name) => {
        const e = document.querySelector(`[data-testid="flow-${name}"] [data-testid="flow-rate"]`);
        return e && e.textContent !== "0.0";
      }, env("OUTPUT"), { timeout: 10000 });
      await page.getByTestId("tail-" + env("OUTPUT")).click();
      // Events come out of the pipeline marked by its first step.
      await page.getByTestId("tail-event").filter({ hasText: '"marked"' }).first().waitFor({ timeout: 15000 });
      await page.getByTestId("tail-status").filter({ hasText: "up to sequence" }).waitFor({ timeout: 5000 });
      await page.getByTestId("tail-stop").click();
      await page.getByTestId("tail").waitFor({ state: "detached", timeout: 5000 });
    });
    await step("placement", async () => {
      await page.goto(url + "/#processors");
      const row = page.getByTestId("processor-" + runner);
      await row.getByTestId("placement").filter({ hasText: "0: " + env("HOST") }).waitFor({ timeout: 10000 });
      await row.getByTestId("restarts").filter({ hasText: /^0$/ }).waitFor({ timeout: 5000 });
      // A rate history of several seconds by now (one sample a second).
      await page.waitForFunction((id) => {
        const e = document.querySelector(`[data-testid="history-${id}"]`);
        return e && Number(e.getAttribute("data-samples")) >= 3;
      }, runner, { timeout: 20000 });
    });
    await step("components", async () => {
      await page.goto(url + "/#components");
      await page.getByTestId("component-" + env("COMPONENT")).getByTestId("used-by").filter({ hasText: runner }).waitFor({ timeout: 10000 });
    });
    await step("subscriptions", async () => {
      await page.goto(url + "/#subscriptions");
      await page.getByTestId("subscription-" + env("COPY")).filter({ hasText: env("OUTPUT") }).waitFor({ timeout: 10000 });
      await page.getByTestId("subscriber-" + env("OUTPUT")).filter({ hasText: "host" }).waitFor({ timeout: 10000 });
    });
    await step("logs", async () => {
      await page.goto(url + "/#logs");
      await page.getByTestId("log-name").fill(`${pipeline}-${failing}`);
      await page.getByTestId("log-show").click();
      await page.getByTestId("log-message").filter({ hasText: "hostile guest traps" }).first().waitFor({ timeout: 15000 });
    });
    await step("pause", async () => {
      await page.goto(url + "/#processors");
      await page.getByTestId("pause-" + runner).click();
      await page.getByTestId("processor-" + runner).getByTestId("phase").filter({ hasText: "paused" }).waitFor({ timeout: 15000 });
    });
    await step("resume", async () => {
      await page.getByTestId("resume-" + runner).click();
      await page.getByTestId("processor-" + runner).getByTestId("phase").filter({ hasText: "running" }).waitFor({ timeout: 30000 });
    });
  } else if (phase === "replay") {
    const event = env("EVENT");
    await step("deadletters", async () => {
      await page.goto(url + "/#deadletters");
      await page.getByTestId("letters-name").fill(env("PIPELINE"));
      await page.getByTestId("letters-show").click();
      await page.getByTestId("letter-" + event).waitFor({ timeout: 15000 });
    });
    await step("replay", async () => {
      await page.getByTestId("replay-" + event).click();
      await page.getByTestId("letters-result").filter({ hasText: "1 replayed" }).waitFor({ timeout: 15000 });
      await page.getByTestId("letter-" + event).waitFor({ state: "detached", timeout: 15000 });
    });
  } else if (phase === "remote") {
    await step("remote", async () => {
      await page.goto(url + "/#pipelines");
      await page.getByTestId("graph-" + env("PIPELINE")).waitFor({ timeout: 10000 });
      // The remote input drawn as such, with the flow it comes from.
      await page.getByTestId("remote-from").filter({ hasText: "from " + env("REMOTE") }).waitFor({ timeout: 15000 });
    });
  } else {
    throw new Error(`unknown PHASE ${phase}`);
  }
  if (errors.length) throw new Error(`errors in the page: ${errors.join("; ")}`);
} finally {
  await browser.close();
}
