from django.db import models


class LiveSession(models.Model):
    """Not a table: gives the live-sessions console (read from Redis, see
    `state.entries()`) a place in the admin and its permissions:
    `view` to list sockets, `change` to disconnect them."""

    class Meta:
        managed = False
        default_permissions = ("view", "change")
        verbose_name = "live session"
        verbose_name_plural = "live sessions"

    def __str__(self):
        return "live session"
