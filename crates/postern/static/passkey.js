// Passkeys in the portal (WebAuthn runs in the browser, so this needs JavaScript; everything
// else in the portal works without it). Two uses:
// - sign-in page: "Use a passkey instead of a code" asks the server for a challenge, lets the
//   browser sign it with a passkey of this site, and sends the answer with the address and the
//   password (the passkey stands for the second factor);
// - account page: "Add a passkey" sends the password again, gets the creation options, lets the
//   browser make the passkey, and posts its answer to be checked and stored.
"use strict";
(function () {
  const status = document.getElementById("passkey-status");
  function say(text) {
    if (status) status.textContent = text;
  }
  if (!window.PublicKeyCredential || !PublicKeyCredential.parseRequestOptionsFromJSON) {
    say("This browser cannot use passkeys here; use a code.");
    return;
  }
  const signin = document.getElementById("passkey-signin");
  if (signin) {
    signin.addEventListener("click", async function () {
      const form = signin.form;
      if (!form.reportValidity()) return;
      try {
        const r = await fetch("/account/passkeys/challenge", { method: "POST", credentials: "same-origin" });
        if (!r.ok) throw new Error("no challenge");
        const opts = await r.json();
        const pk = opts.publicKey || opts;
        const cred = await navigator.credentials.get({ publicKey: PublicKeyCredential.parseRequestOptionsFromJSON(pk) });
        form.querySelector("input[name=passkey]").value = JSON.stringify(cred.toJSON());
        form.querySelector("input[name=code]").value = "";
        form.submit();
      } catch (e) {
        say("No passkey was used (" + e.name + "). Use a code instead, or try again.");
      }
    });
    signin.hidden = false;
  }
  const add = document.getElementById("passkey-add");
  if (add) {
    add.addEventListener("submit", async function (ev) {
      ev.preventDefault();
      const body = new URLSearchParams(new FormData(add));
      try {
        const r = await fetch("/account/passkeys/begin", { method: "POST", body: body, credentials: "same-origin" });
        const opts = await r.json();
        if (!r.ok) {
          say(opts.error || "The passkey could not be started.");
          return;
        }
        const pk = opts.publicKey || opts;
        const cred = await navigator.credentials.create({ publicKey: PublicKeyCredential.parseCreationOptionsFromJSON(pk) });
        const finish = document.getElementById("passkey-finish");
        finish.querySelector("input[name=name]").value = add.querySelector("input[name=name]").value;
        finish.querySelector("input[name=credential]").value = JSON.stringify(cred.toJSON());
        finish.submit();
      } catch (e) {
        say("No passkey was made (" + e.name + ").");
      }
    });
  }
})();
