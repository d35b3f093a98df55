// Live feedback on a new password in the portal: while it is typed (after a short pause), the
// server's own policy is asked (POST /account/password/check with the form's CSRF token: length,
// strength estimate, common and breached lists) and its answer shown under the field. The
// password goes only to this server, inside TLS; nothing is stored. Without JavaScript the same
// policy answers when the form is sent.
"use strict";
(function () {
  const input = document.getElementById("pw-new");
  const out = document.getElementById("pw-feedback");
  if (!input || !out) return;
  const csrf = input.form.querySelector("input[name=csrf]").value;
  let timer = null;
  let asked = 0;
  async function ask() {
    const mine = ++asked;
    if (!input.value) {
      out.textContent = "";
      return;
    }
    const body = new URLSearchParams({ csrf: csrf, new: input.value });
    try {
      const r = await fetch("/account/password/check", { method: "POST", body: body, credentials: "same-origin" });
      if (mine !== asked) return;
      if (!r.ok) {
        out.textContent = "";
        return;
      }
      const v = await r.json();
      out.textContent = v.message;
      out.className = v.acceptable ? "notice" : "error";
      input.setAttribute("aria-invalid", v.acceptable ? "false" : "true");
    } catch (e) {
      out.textContent = "";
    }
  }
  input.addEventListener("input", function () {
    clearTimeout(timer);
    timer = setTimeout(ask, 300);
  });
})();
