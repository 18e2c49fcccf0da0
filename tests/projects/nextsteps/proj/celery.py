from minique import Celery

app = Celery(
    "proj",
    broker="redis://localhost:6379/0",
    backend="redis://localhost:6379/0",
    include=["proj.tasks"],
)

# Optional configuration, see the application user guide.
app.conf.update(
    result_expires=3600,
)


@app.on_after_configure.connect
def setup_periodic_tasks(sender, **kwargs):
    from minique.schedules import crontab
    from proj.tasks import tick

    # every half second, with arguments (the periodic tasks guide's way)
    sender.add_periodic_task(0.5, tick.s("proj:ticks", "configured"), name="tick every 0.5s")
    # a crontab entry: Monday mornings
    sender.add_periodic_task(crontab(hour=7, minute=30, day_of_week=1), tick.s("proj:ticks", "monday"),
                             name="monday morning")


if __name__ == "__main__":
    app.start()
