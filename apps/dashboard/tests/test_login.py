from conftest import PASSWORD


def test_the_dashboard_sends_anonymous_visitors_to_the_login_page(client):
    response = client.get("/")
    assert response.status_code == 302
    assert response["Location"].startswith("/accounts/login/?next=/")


def test_the_tokens_page_needs_a_login_too(client):
    assert client.get("/tokens/")["Location"].startswith("/accounts/login/")


def test_the_login_page_renders_a_form(client):
    html = client.get("/accounts/login/").content.decode()
    assert 'name="username"' in html and 'name="password"' in html
    assert "csrfmiddlewaretoken" in html


def test_logging_in_leads_to_the_board(client, owner):
    response = client.post("/accounts/login/", {"username": "owner", "password": PASSWORD, "next": "/"})
    assert response.status_code == 302
    assert response["Location"] == "/"
    assert client.get("/").status_code == 200


def test_a_wrong_password_shows_an_error(client, owner):
    response = client.post("/accounts/login/", {"username": "owner", "password": "nope"})
    assert response.status_code == 200
    assert "didn't match" in response.content.decode()
