"""Jobs: one submit / append / seal / cancel / delete path for every way in
(:mod:`core.jobs.service`), the files stored before the rows (:mod:`core.jobs.storing`) and
a job's end, recorded once (:mod:`core.jobs.ending`)."""
