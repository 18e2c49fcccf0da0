from minique import shared_task


@shared_task(name="notes.shout")
def shout(text):
    return text.upper()


@shared_task(bind=True)
def whoami(self):
    return {"task": self.name, "class": type(self).__name__, "worker": self.request.hostname}
