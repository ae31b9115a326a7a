"""The console in a real browser (issue 23 item 5), driven by console_browser.rs.

Debian's chromium, driven by Playwright for Python, visits the console as nobody, then
signs in as each role (the operator by id and secret, the auditor by uploading its
credential file, the merchant by id and secret) and reads every page: the HTTP status,
where the browser ended up, every `data-figure`, every table row (`data-row`, its
`data-col` cells) and the page's text. It also tries a wrong secret and an unknown id.
It only collects: console_browser.rs compares what it saw with the gRPC answers. It
saves a screenshot of the operator's overview.

Usage: python console_browser.py CONFIG.json OUT.json
CONFIG: {"url", "chromium", "screenshot", "operator": {"id", "secret"},
         "auditor_cred": PATH, "merchant": {"id", "secret"}, "merchant_probe": [PATH...],
         "pages": [PATH...]}
"""

import json
import sys

from playwright.sync_api import sync_playwright

COLLECT = """() => {
  const out = {figures: {}, rows: {}, charts: []};
  document.querySelectorAll('[data-figure]').forEach(e => { out.figures[e.dataset.figure] = e.textContent.trim(); });
  document.querySelectorAll('tr[data-row]').forEach(tr => {
    const row = {};
    tr.querySelectorAll('[data-col]').forEach(td => { row[td.dataset.col] = td.textContent.trim(); });
    out.rows[tr.dataset.row] = row;
  });
  document.querySelectorAll('svg[data-chart]').forEach(svg => out.charts.push(svg.dataset.chart));
  out.text = document.body ? document.body.innerText : '';
  out.cookie_visible_to_script = document.cookie;
  return out;
}"""


def visit(page, base, path):
    response = page.goto(base + path)
    seen = page.evaluate(COLLECT)
    seen["status"] = response.status if response else None
    seen["url"] = page.url[len(base):]
    return seen


def sign_in(page, base, credential=None, file=None):
    page.goto(base + "/login")
    if file is not None:
        page.set_input_files("#credential", file)
    else:
        page.fill("#id", credential["id"])
        page.fill("#secret", credential["secret"])
    with page.expect_navigation():
        page.click("button[type=submit]")
    seen = page.evaluate(COLLECT)
    seen["url"] = page.url[len(base):]
    return seen


def main():
    config = json.load(open(sys.argv[1]))
    base = config["url"]
    result = {}
    # Playwright starts chromium with a fresh, empty profile directory of its own (it
    # refuses a --user-data-dir argument).
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=config["chromium"],
            headless=True,
            args=[
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
            ],
        )

        def session():
            context = browser.new_context(viewport={"width": 1280, "height": 900})
            return context, context.new_page()

        # Nobody signed in: every page leads to the sign-in page.
        context, page = session()
        result["anonymous"] = {path: visit(page, base, path) for path in config["pages"]}
        # A wrong secret of a real id, and an id nobody has.
        wrong = dict(config["operator"], secret="0" * 64)
        unknown = dict(config["operator"], id="o0nobody")
        result["wrong_secret"] = sign_in(page, base, wrong)
        result["unknown_id"] = sign_in(page, base, unknown)
        result["after_refusals"] = visit(page, base, "/overview")
        context.close()

        roles = [
            ("operator", {"credential": config["operator"]}),
            ("auditor", {"file": config["auditor_cred"]}),
            ("merchant", {"credential": config["merchant"]}),
        ]
        for role, how in roles:
            context, page = session()
            landed = sign_in(page, base, **how)
            pages = {path: visit(page, base, path) for path in config["pages"]}
            if role == "merchant":
                pages.update({path: visit(page, base, path) for path in config["merchant_probe"]})
            if role == "operator":
                page.goto(base + "/overview")
                page.screenshot(path=config["screenshot"], full_page=True)
            cookies = context.cookies()
            # Sign out: the session ends, the pages lead to sign-in again.
            page.goto(base + "/vouchers" if role == "merchant" else base + "/royalty" if role == "auditor" else base + "/overview")
            with page.expect_navigation():
                page.click("header button[type=submit]")
            after = visit(page, base, config["pages"][0])
            result[role] = {"landed": landed, "pages": pages, "cookies": cookies, "after_sign_out": after}
            context.close()
        browser.close()
    json.dump(result, open(sys.argv[2], "w"), indent=1)


if __name__ == "__main__":
    main()
