// The sign-in page: with an API token, or with a one-time login link from
// `bitelab web` (its code is in the URL's fragment, which never reaches the
// server's logs; it is taken out of the address bar at once).

const check = document.querySelector('meta[name="bitelab-login-csrf"]').content;
const problem = document.getElementById("error");

function show(message) {
  problem.textContent = message;
  problem.hidden = false;
}

async function signIn(headers, button) {
  button.disabled = true;
  problem.hidden = true;
  try {
    const response = await fetch("/login" + location.search, {
      method: "POST",
      headers: { ...headers, "X-Login-CSRF": check, Accept: "application/json" },
      credentials: "same-origin",
    });
    let data = null;
    try {
      data = await response.json();
    } catch {
      data = null;
    }
    if (!response.ok) {
      show((data && data.error && data.error.message) || `sign-in failed (${response.status})`);
      return;
    }
    location.replace(data.next);
  } catch (error) {
    show(`cannot reach the lab: ${error.message}`);
  } finally {
    button.disabled = false;
  }
}

const code = new URLSearchParams(location.hash.slice(1)).get("code");
if (code) {
  history.replaceState(null, "", location.pathname + location.search);
  const section = document.getElementById("with-link");
  const button = document.getElementById("use-link");
  section.hidden = false;
  button.addEventListener("click", () => signIn({ "X-Login-Code": code }, button));
  button.focus();
} else {
  document.getElementById("token").focus();
}

const form = document.getElementById("with-token");
form.addEventListener("submit", (event) => {
  event.preventDefault();
  const token = form.elements.token.value.trim();
  signIn({ Authorization: `Bearer ${token}` }, form.querySelector("button"));
});
