"""The edit-lease example from docs/leases.rst, as one runnable script.

Run it with ``python docs/examples/leases.py``. It uses the database named by
``DATABASE_URL`` (or what ``chrononaut.testing.database_url()`` finds), creates
the tables ``doc_account``, ``doc_account_history`` and ``chrononaut_lease``, and
drops them again at the end.
"""

from datetime import timedelta

from flask import Flask

from chrononaut import RecordLeasedError, Versioned, VersionedSQLAlchemy, acting_as
from chrononaut.testing import database_url

app = Flask(__name__)
app.config["SQLALCHEMY_DATABASE_URI"] = database_url()
db = VersionedSQLAlchemy(app)


class Account(db.Model, Versioned):
    __tablename__ = "doc_account"
    __chrononaut_leases__ = True  # defines chrononaut_lease in the same MetaData

    id = db.Column(db.Integer, primary_key=True)
    name = db.Column(db.String(120))


with app.app_context():
    db.create_all()
    try:
        db.session.add(Account(id=1, name="Acme"))
        db.session.commit()
        account = db.session.get(Account, 1)

        # Alice opens the edit form: she takes the lease (committed at once).
        with acting_as("alice"):
            lease = account.lease(timedelta(minutes=5), note="address form")

        # Bob sees who is editing, and until when, before he types.
        holder = account.lease_holder()
        assert holder is not None and holder.user_id == "alice" and holder.token is None

        # Bob's save is refused while Alice holds the lease; nothing is written.
        account.name = "Bob's name"
        try:
            with acting_as("bob"):
                db.session.commit()
        except RecordLeasedError as error:
            assert error.lease is not None and error.lease.user_id == "alice"
            db.session.rollback()
        else:
            raise AssertionError("Bob's save should have been refused")

        # Alice's page renews the lease; her save goes through and releases it.
        with acting_as("alice"):
            account.renew_lease(lease.token, commit=False)
            account.name = "Acme Rockets"
            account.release_lease(lease.token, commit=False)
            db.session.commit()
        assert account.versions()[-1].change_info["lease"]["user_id"] == "alice"
        assert account.lease_holder() is None
        print("edit leases example: ok")
    finally:
        db.session.rollback()
        db.drop_all()
