# frozen_string_literal: true

# Sidekiq under graceshell, loaded by the sidekiq preset through RUBYOPT, so
# `sidekiq` needs no change. Read from Sidekiq 6.4 (lib/sidekiq/cli.rb,
# launcher.rb, manager.rb, fetch.rb, processor.rb):
#
# - TERM (or INT) makes Sidekiq quiet its threads and wait up to its
#   shutdown timeout (-t, default 25 s) for running jobs; then it pushes the
#   unfinished ones back to Redis (bulk_requeue), kills their threads and
#   gives them up to 3 s for `ensure` blocks before it exits. A timeout that
#   ends after graceshell's KILL loses those jobs. Here, when the command
#   line (-t/--timeout) and the config file leave it at the default, the
#   timeout is what is left of graceshell's budget minus those 3 s.
# - Sidekiq has no signal for "requeue now". Its wait for running jobs
#   checks every half second whether they are done; here it also stops
#   waiting once graceshell has escalated (its cold step, TERM at
#   budget-3s in the preset, rewrites the shutdown notice first), so a
#   longer -t given by the user is cut short there and the jobs still go
#   back before the KILL.
# - Every job is recorded in graceshell's ledger by a server middleware while
#   it runs; one pushed back to Redis keeps its entry with "requeued": true.
#
# Outside graceshell, or in a Ruby process that never loads Sidekiq's
# launcher, nothing changes.
require_relative "graceshell"

module Graceshell
  module Sidekiq
    DEFAULT_TIMEOUT = 25 # Sidekiq.options[:timeout] when nothing sets it
    # What Manager#hard_shutdown waits for `ensure` blocks after the requeue;
    # the sidekiq preset's cold step (budget-3s) keeps the same before the KILL.
    ENSURE_GRACE = 3

    # The command line as started: Sidekiq's option parser consumes ARGV.
    TIMEOUT_GIVEN = ARGV.any? { |word| word.match?(/\A(-t|--timeout)(=?\d+)?\z/) }

    module_function

    # Sets the shutdown timeout that ends ENSURE_GRACE before graceshell's
    # KILL, unless the user chose one (or the budget is unknown).
    def fit_timeout(options, stopped_at)
      return if options.nil? || TIMEOUT_GIVEN || options[:timeout] != DEFAULT_TIMEOUT

      left = Graceshell.remaining(stopped_at)
      return unless left

      options[:timeout] = [left - ENSURE_GRACE, 0].max
      ::Sidekiq.logger.info("graceshell: shutdown timeout #{options[:timeout].round(1)}s, so unfinished jobs " \
                            "are back in Redis before graceshell's kill")
    rescue StandardError => e # never stand in the way of a shutdown
      warn("graceshell: Sidekiq's shutdown timeout left as it is: #{e.class}: #{e.message}")
    end

    class Ledger
      def call(_worker, job, queue)
        path = Graceshell.track(job["jid"], job["wrapped"] || job["class"], framework: "sidekiq", queue: queue)
        begin
          result = yield
        rescue ::Sidekiq::Shutdown
          # Killed by the hard shutdown: the entry stays so the report names it.
          Graceshell.update(path, interrupted: true)
          raise
        rescue Exception # rubocop:disable Lint/RescueException - any other end is the job's own
          Graceshell.forget(path)
          raise
        end
        Graceshell.forget(path)
        result
      end
    end

    module Launcher
      def stop
        Graceshell::Sidekiq.fit_timeout(@options || @config, Time.now) # Sidekiq 6 || 7
        super
      end
    end

    module Manager
      private

      # Sidekiq's wait for running jobs to finish; graceshell's cold step ends
      # it early. Not the wait for `ensure` blocks after the requeue.
      def wait_for(deadline, &condition)
        super(deadline) { condition.call || (!@graceshell_requeued && Graceshell.escalated?) }
      end

      def hard_shutdown
        @graceshell_requeued = true
        super
      end
    end

    module Fetch
      def bulk_requeue(inprogress, *)
        super
        inprogress.each do |work|
          jid = (::Sidekiq.load_json(work.job)["jid"] rescue nil) # rubocop:disable Style/RescueModifier
          Graceshell.update(Graceshell.ledger_path(jid), requeued: true) if jid
        end
      end
    end
  end
end

# Sidekiq::CLI is defined by `sidekiq` (lib/sidekiq/cli.rb) after the
# launcher, manager and fetcher are loaded, and only in the server process.
if Graceshell.active?
  Graceshell.when_defined("Sidekiq::CLI") do
    ::Sidekiq::Launcher.prepend(Graceshell::Sidekiq::Launcher)
    ::Sidekiq::Manager.prepend(Graceshell::Sidekiq::Manager)
    ::Sidekiq::BasicFetch.prepend(Graceshell::Sidekiq::Fetch)
    ::Sidekiq.configure_server do |config|
      config.server_middleware { |chain| chain.add(Graceshell::Sidekiq::Ledger) }
    end
  end
end
