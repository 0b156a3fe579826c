"""Signing in to a real server's web UI as a browser does."""

import urllib.request


def sign_in(server, token, context):
    """The session cookie (``name=value``) of signing in with ``token``
    (Secure over TLS, HttpOnly always); ``context`` checks a TLS server."""
    page = urllib.request.urlopen(server.url + "/login", context=context)
    check = page.headers["Set-Cookie"].split(";")[0].split("=", 1)[1]
    request = urllib.request.Request(
        server.url + "/login",
        method="POST",
        data=b"",
        headers={
            "Authorization": f"Bearer {token}",
            "X-Login-CSRF": check,
            "Cookie": f"bitelab_login={check}",
        },
    )
    answer = urllib.request.urlopen(request, context=context)
    cookie = answer.headers["Set-Cookie"]
    assert ("Secure" in cookie) == server.url.startswith("https:")
    assert "HttpOnly" in cookie
    return cookie.split(";")[0]
