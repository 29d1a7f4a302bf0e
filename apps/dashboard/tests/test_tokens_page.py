from asgiref.sync import async_to_sync

from stocktracker.lib.state import get_state


def test_it_lists_the_users_tokens_by_prefix_only(client, owner, other_user, owner_token):
    from apps.accounts.models import ApiToken

    token, raw = owner_token
    other, _ = ApiToken.issue(other_user, label="someone else's")
    client.force_login(owner)
    html = client.get("/tokens/").content.decode()
    assert token.prefix in html
    assert "bot" in html
    assert raw not in html
    assert raw[len(token.prefix) :] not in html
    assert other.prefix not in html


def test_it_shows_live_connections_per_token_and_the_users_limits(client, owner, owner_token):
    token, _ = owner_token

    async def connect(conn_id):
        await get_state().lease_acquire(conn_id, [(f"token:{token.pk}", None), (f"user:{owner.pk}", None)], 60)

    async_to_sync(connect)("c1")
    async_to_sync(connect)("c2")
    client.force_login(owner)
    html = client.get("/tokens/").content.decode()
    assert f'<td data-role="live">2 of {token.max_connections}</td>' in html
    assert '<span data-role="live-total">2</span> of 10' in html


def test_staff_see_a_link_to_the_admin_and_others_do_not(client, owner, staff):
    client.force_login(owner)
    assert 'href="/admin/"' not in client.get("/tokens/").content.decode()
    client.force_login(staff)
    assert 'href="/admin/"' in client.get("/tokens/").content.decode()
